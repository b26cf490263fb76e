//! `cargo xtask image`: an OCI image of portwatch, built without a
//! registry, a daemon or a Dockerfile.
//!
//! One layer: the release binary (the eBPF object is embedded in it, see
//! portwatch/src/capture/attach.rs), the tools it runs to read the node's
//! DNAT rules (hostPorts, NodePorts: `iptables-save`, `ip6tables-save`,
//! their legacy twins and `nft`, from the build host's Debian packages,
//! with iptables' extension modules, and /etc/protocols for `nft`) and the
//! shared libraries that `ldd` names for all of these, nothing else: no
//! shell, no /etc/passwd. Written twice:
//! as an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) and as one tar of that layout plus Docker's
//! `manifest.json`, which `podman load`, `docker load` and `ctr images
//! import` all read. Every timestamp, owner and mode is fixed and the
//! entries are sorted, so the same binary always gives the same digest.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Where the binary sits in the image.
const BINARY: &str = "usr/bin/portwatch";

/// The tools portwatch runs by absolute path to list DNAT rules
/// (portwatch-core/src/holders/dnat/mod.rs `LISTERS`): (path in the
/// image, the file it is, the link's target when a symbolic link). Debian's
/// iptables-nft is one program that acts as its name says; it is taken as
/// such whatever the host's alternative, so the image is the same on any.
/// Legacy iptables' listers come too: a node whose kube-proxy or CNI
/// writes legacy rules (invisible to nft) is read only through them.
const TOOLS: [(&str, &str, Option<&str>); 7] = [
    (
        "usr/sbin/xtables-nft-multi",
        "/usr/sbin/xtables-nft-multi",
        None,
    ),
    ("usr/sbin/iptables-save", "", Some("xtables-nft-multi")),
    ("usr/sbin/ip6tables-save", "", Some("xtables-nft-multi")),
    (
        "usr/sbin/xtables-legacy-multi",
        "/usr/sbin/xtables-legacy-multi",
        None,
    ),
    (
        "usr/sbin/iptables-legacy-save",
        "",
        Some("xtables-legacy-multi"),
    ),
    (
        "usr/sbin/ip6tables-legacy-save",
        "",
        Some("xtables-legacy-multi"),
    ),
    ("usr/sbin/nft", "/usr/sbin/nft", None),
];

/// iptables' extension modules (`libxt_comment.so`, `libxt_tcp.so`...):
/// without the one for a match or target, `iptables-save` cannot print a
/// rule that uses it. All of them, since any may be in a node's rules.
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Protocol names by number (Debian's netbase): `nft` prints a protocol
/// through it, and without it prints kube-proxy's `tcp . 30080` map keys as
/// `6 . 30080`, which portwatch does not read as a NodePort.
const PROTOCOLS: &str = "/etc/protocols";

/// The image's default command: the DaemonSet's is in its manifest.
const CMD: [&str; 2] = ["watch", "--json"];

/// What `cargo xtask image` was asked.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// The portwatch binary to put in the image; by default the release
    /// build, built first.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where to write `portwatch-oci/` (the layout) and `portwatch.tar`.
    #[arg(long, default_value = "target/image")]
    out: PathBuf,
}

/// A content-addressed blob of the layout.
struct Blob {
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        Blob { bytes, digest }
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.bytes.len()})
    }

    /// Its path inside the layout.
    fn path(&self) -> String {
        format!("blobs/sha256/{}", &self.digest["sha256:".len()..])
    }
}

/// Builds the image; prints its name, digest and sizes.
pub fn run(args: &ImageArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => crate::build_release()?,
    };
    let out = crate::root().join(&args.out);
    let version = version(&binary)?;
    let name = format!("localhost/portwatch:{version}");
    let files = contents(&binary)?;
    let layer_tar = layer(&files)?;
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer_tar));
    let layer = Blob::new(gzip(&layer_tar)?);
    let config = Blob::new(serde_json::to_vec(&config(&diff_id, &version))?);
    let manifest = Blob::new(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor("application/vnd.oci.image.config.v1+json"),
        "layers": [layer.descriptor("application/vnd.oci.image.layer.v1.tar+gzip")],
    }))?);
    let mut index = manifest.descriptor("application/vnd.oci.image.manifest.v1+json");
    index["annotations"] = json!({
        // containerd (`ctr images import`) names the image after this one,
        "io.containerd.image.name": name,
        // the OCI layout's own tag.
        "org.opencontainers.image.ref.name": version,
    });
    // Docker's archive index, which podman and docker load by: the same
    // blobs, named by their paths.
    let docker = json!([{
        "Config": config.path(),
        "RepoTags": [name],
        "Layers": [layer.path()],
    }]);
    let (digest, compressed) = (manifest.digest.clone(), layer.bytes.len());
    let entries: BTreeMap<String, Vec<u8>> = [
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_owned(),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [index]}))?,
        ),
        ("manifest.json".to_owned(), serde_json::to_vec(&docker)?),
    ]
    .into_iter()
    .chain(
        [layer, config, manifest]
            .into_iter()
            .map(|b| (b.path(), b.bytes)),
    )
    .collect();
    let dir = out.join("portwatch-oci");
    write_layout(&dir, &entries)?;
    let archive = out.join("portwatch.tar");
    let tar = archive_of(
        entries
            .iter()
            .map(|(p, b)| (p.as_str(), Entry::File(b, 0o644))),
    )?;
    fs::write(&archive, &tar).with_context(|| format!("cannot write {}", archive.display()))?;
    println!(
        "image {name}\nmanifest {digest}\nlayer {compressed} bytes compressed, {} bytes unpacked\n{}\n{}",
        layer_tar.len(),
        dir.display(),
        archive.display()
    );
    Ok(())
}

/// `portwatch --version`'s version: the image's tag.
fn version(binary: &Path) -> Result<String> {
    let out = crate::output(Command::new(binary).arg("--version"))?;
    match out.trim().strip_prefix("portwatch ") {
        Some(v)
            if !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c)) =>
        {
            Ok(v.replace('+', "_"))
        }
        _ => bail!("{}: unexpected --version output {out:?}", binary.display()),
    }
}

/// A file of the layer.
enum Content {
    /// Its bytes and mode.
    File(Vec<u8>, u32),
    /// A symbolic link to this target.
    Link(&'static str),
}

/// The image's files by their path in the image: the binary, the DNAT
/// tools and iptables' extension modules, and each shared library `ldd`
/// names for any of these at the path the dynamic linker looks for it (the
/// interpreter's absolute path, the libraries' too).
fn contents(binary: &Path) -> Result<BTreeMap<String, Content>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut elves = vec![(BINARY.to_owned(), binary.to_owned())];
    let mut files = BTreeMap::new();
    let protocols = Content::File(read(Path::new(PROTOCOLS))?, 0o644);
    files.insert(PROTOCOLS.trim_start_matches('/').to_owned(), protocols);
    for (path, host, link) in TOOLS {
        match link {
            Some(target) => drop(files.insert(path.to_owned(), Content::Link(target))),
            None => elves.push((path.to_owned(), PathBuf::from(host))),
        }
    }
    let modules = fs::read_dir(XTABLES).with_context(|| format!("cannot list {XTABLES}"))?;
    for module in modules {
        let host = module?.path();
        if host.extension().is_some_and(|e| e == "so") {
            let path = host.to_string_lossy().trim_start_matches('/').to_owned();
            elves.push((path, host));
        }
    }
    let mut libs = std::collections::BTreeSet::new();
    for (path, host) in elves {
        libs.extend(libraries(&crate::output(Command::new("ldd").arg(&host))?)?);
        files.insert(path, Content::File(read(&host)?, 0o755));
    }
    for lib in libs {
        // The file itself, not the symlink: the soname is its name in the image.
        let bytes = read(&fs::canonicalize(&lib)?)?;
        files.insert(
            lib.trim_start_matches('/').to_owned(),
            Content::File(bytes, 0o755),
        );
    }
    Ok(files)
}

/// The absolute paths in `ldd`'s output (`libc.so.6 => /lib/…/libc.so.6
/// (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`); the vDSO has none.
fn libraries(ldd: &str) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in ldd.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        let path = line.rsplit_once(" => ").map_or(line, |(_, p)| p);
        if let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(path.to_owned());
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The layer: the files and their parent directories, sorted.
fn layer(files: &BTreeMap<String, Content>) -> Result<Vec<u8>> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    // Mount points for the DaemonSet's volumes that a runtime would
    // otherwise have to make: /proc, /sys and /tmp.
    dirs.extend(["proc/", "sys/", "tmp/"].map(String::from));
    let mut entries: BTreeMap<&str, Entry> = BTreeMap::new();
    for d in &dirs {
        entries.insert(d, Entry::Dir);
    }
    for (path, content) in files {
        let entry = match content {
            Content::File(bytes, mode) => Entry::File(bytes, *mode),
            Content::Link(target) => Entry::Link(target),
        };
        entries.insert(path, entry);
    }
    archive_of(entries)
}

/// An entry of a tar.
enum Entry<'a> {
    Dir,
    File(&'a [u8], u32),
    Link(&'a str),
}

/// A tar of its entries, in order. Owner root, mtime 0: the same input
/// always gives the same bytes.
fn archive_of<'a>(entries: impl IntoIterator<Item = (&'a str, Entry<'a>)>) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        match entry {
            Entry::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                tar.append_data(&mut header, path, &[][..])?;
            }
            Entry::File(bytes, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, path, bytes)?;
            }
            Entry::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                tar.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

/// gzip without a name or a timestamp in its header.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// The image configuration (OCI image-spec config.md).
fn config(diff_id: &str, version: &str) -> serde_json::Value {
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{BINARY}")],
            "Cmd": CMD,
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "portwatch",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "(MIT OR Apache-2.0) AND GPL-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask image"}],
    })
}

/// Writes the layout directory afresh.
fn write_layout(dir: &Path, entries: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    for (path, bytes) in entries {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().context("a blob has a directory")?)?;
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_absolute_paths_only() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            libraries(ldd).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(libraries("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn the_layer_is_the_same_bytes_twice() {
        let files = BTreeMap::from([
            (
                "usr/bin/portwatch".to_owned(),
                Content::File(b"x".to_vec(), 0o755),
            ),
            (
                "lib64/ld.so".to_owned(),
                Content::File(b"y".to_vec(), 0o755),
            ),
            (
                "usr/sbin/nft-link".to_owned(),
                Content::Link("../bin/portwatch"),
            ),
        ]);
        let a = gzip(&layer(&files).unwrap()).unwrap();
        let b = gzip(&layer(&files).unwrap()).unwrap();
        assert_eq!(a, b);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]));
        let mut names = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            if name == "usr/sbin/nft-link" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
                let target = entry.link_name().unwrap().unwrap();
                assert_eq!(target.to_str(), Some("../bin/portwatch"));
            }
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "lib64/",
                "lib64/ld.so",
                "proc/",
                "sys/",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/bin/portwatch",
                "usr/sbin/",
                "usr/sbin/nft-link"
            ]
        );
    }
}
