//! `portwatch check -f` against the real thing: each scenario is a
//! prediction (`check -f compose.yml --json`) compared with what Debian's
//! `docker-compose up -d` (1.29) then does on Debian's dockerd (20.10):
//! check says "would fail" for exactly the services that fail to start,
//! on the ports they fail on. One dockerd for every scenario it can serve
//! (a daemon takes seconds to start), in a private network namespace, with
//! an image made of busybox-static (no registry is reachable); a second
//! one only for `userland-proxy=false`. The reader itself is held to the
//! real `docker-compose config` on the same files.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use common::{
    docker::{compose, Docker},
    preflight::netns,
    *,
};
use saphyr::{LoadableYamlNode as _, Scalar, Yaml};
use serde_json::Value;

/// `portwatch check ARGS --json` in `ns`, in `dir`: the exit status, the
/// verdicts and the unchecked lines.
fn check(ns: &Netns, dir: &Path, args: &[&str]) -> (i32, Vec<Value>, Vec<Value>) {
    let out = run_check(ns, dir, args, true);
    let (mut verdicts, mut unchecked) = (Vec::new(), Vec::new());
    for v in preflight::json_lines(&out) {
        if v.get("unchecked").is_some() {
            unchecked.push(v);
        } else {
            verdicts.push(v);
        }
    }
    (out.status.code().expect("exit status"), verdicts, unchecked)
}

fn run_check(ns: &Netns, dir: &Path, args: &[&str], json: bool) -> Output {
    let mut args = args.to_vec();
    if json {
        args.push("--json");
    }
    preflight::run_check(ns, Some(dir), &args)
}

/// The service an entry was read for (`... service web: 8080:80`).
fn service_of(from: &str) -> String {
    let at = from.find(" service ").expect("from names a service") + " service ".len();
    from[at..].split(':').next().unwrap().to_owned()
}

/// check's prediction: each service that would fail, with the bindings
/// (`0.0.0.0:8080`) it would fail on.
fn predicted(verdicts: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in verdicts.iter().filter(|v| v["fails"] == true) {
        let binding = v["binding"].as_str().unwrap();
        let addr = binding.rsplit_once('/').unwrap().0.to_owned();
        out.entry(service_of(v["from"][0].as_str().unwrap()))
            .or_default()
            .insert(addr);
    }
    out
}

/// What `up -d` did: each service of `project` whose container is not
/// running, with the address it failed on (from compose's error).
fn failed(docker: &Docker, project: &str, up: &Output) -> BTreeMap<String, Option<String>> {
    let stderr = String::from_utf8_lossy(&up.stderr);
    let ps = docker.cli(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Label \"com.docker.compose.service\"}} {{.State}}",
    ]);
    assert!(ps.status.success(), "docker ps: {ps:?}");
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, state)| *state != "running")
        .map(|(svc, _)| (svc.to_owned(), failed_on(&stderr, svc)))
        .collect()
}

/// The address in compose's error for `service`: `listen tcp4
/// 0.0.0.0:P: bind: ...` (docker-proxy), `Bind for 0.0.0.0:P failed`
/// (dockerd's own allocator).
fn failed_on(stderr: &str, service: &str) -> Option<String> {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("Cannot start service {service}:")))?;
    for marker in [
        "listen tcp4 ",
        "listen tcp6 ",
        "listen udp4 ",
        "listen udp6 ",
        "Bind for ",
    ] {
        if let Some(i) = line.find(marker) {
            let token = line[i + marker.len()..].split(' ').next()?;
            return Some(token.trim_end_matches(':').to_owned());
        }
    }
    None
}

/// A project directory `name` under the daemon's, with `compose.yml`.
fn project(docker: &Docker, name: &str, yaml: &str) -> PathBuf {
    let dir = docker.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yml"), yaml).unwrap();
    dir
}

/// A service that publishes `ports` (short syntax) with busybox httpd.
fn service(name: &str, ports: &[&str]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "  {name}:\n    image: pwtest:1\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\"]\n    ports: [{}]\n",
        ports.join(", ")
    )
}

fn file(services: &[String]) -> String {
    format!("services:\n{}", services.concat())
}

/// The scenario's common part: check, then up, then compare. Returns
/// check's verdicts. `conflict`: services of which exactly one fails
/// (two entries of the plan: whichever binds second).
struct Run<'a> {
    docker: &'a Docker,
    ns: &'a Netns,
}

impl Run<'_> {
    fn scenario(
        &self,
        name: &str,
        dir: &Path,
        extra: &[&str],
        conflict: &[&str],
    ) -> (i32, Vec<Value>) {
        let mut args = vec!["-f", "compose.yml", "-p", name];
        args.extend_from_slice(extra);
        let (code, verdicts, _) = check(self.ns, dir, &args);
        let said = predicted(&verdicts);
        let mut up_args = vec!["-p", name];
        up_args.extend_from_slice(extra);
        up_args.extend_from_slice(&["up", "-d"]);
        let up = compose(self.docker, self.ns, dir, &up_args);
        let failed = failed(self.docker, name, &up);
        let context = format!(
            "scenario {name}: check said {said:?}, up failed {failed:?}\nverdicts: {verdicts:#?}\nup: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        assert_eq!(code, if said.is_empty() { 0 } else { 1 }, "{context}");
        assert_eq!(up.status.success(), failed.is_empty(), "{context}");
        for (svc, at) in &failed {
            let bindings = said
                .get(svc)
                .unwrap_or_else(|| panic!("{svc} failed: {context}"));
            let at = at
                .as_ref()
                .unwrap_or_else(|| panic!("no address for {svc}: {context}"));
            assert!(bindings.contains(at), "{svc} failed on {at}: {context}");
        }
        for svc in said.keys() {
            if conflict.contains(&svc.as_str()) {
                continue;
            }
            assert!(failed.contains_key(svc), "{svc} started: {context}");
        }
        if !conflict.is_empty() {
            let n = conflict.iter().filter(|s| failed.contains_key(**s)).count();
            assert_eq!(
                n,
                conflict.len() - 1,
                "one of {conflict:?} starts: {context}"
            );
            assert!(conflict.iter().all(|s| said.contains_key(*s)), "{context}");
        }
        (code, verdicts)
    }

    fn down(&self, name: &str, dir: &Path) {
        let down = compose(self.docker, self.ns, dir, &["-p", name, "down", "-t", "1"]);
        assert!(down.status.success(), "down {name}: {down:?}");
    }
}

fn verdict_of<'a>(verdicts: &'a [Value], binding: &str) -> &'a Value {
    verdicts
        .iter()
        .find(|v| v["binding"] == binding)
        .unwrap_or_else(|| panic!("no {binding} in {verdicts:#?}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Every scenario one default dockerd serves, one after the other.
#[test]
fn compose_predictions_match_docker_compose_up() {
    let ns = Arc::new(netns("pw-chk-compose"));
    let docker = Docker::start(ns.clone(), "chk-compose", &[]);
    let run = Run {
        docker: &docker,
        ns: &ns,
    };
    // Five ports apart, so a range's neighbours stay free.
    let base = port();
    let p = |k: u16| base + 5 * k;

    // A host process holds a published port; a service under a profile
    // that is not active publishes it too, and does not count.
    let held = ns.run({
        let at = addr(&format!("0.0.0.0:{}", p(0)));
        move || Process::fork(move || hold(at, false, |_| {}))
    });
    let dir = project(
        &docker,
        "host",
        &(file(&[
            service("web", &[&format!("{}:80", p(0))]),
            service("ok", &[&format!("{}:80", p(1))]),
        ]) + &service("dbg", &[&format!("{}:81", p(0))])
            + "    profiles: [debug]\n"),
    );
    let (_, v) = run.scenario("pwhost", &dir, &[], &[]);
    let web = verdict_of(&v, &format!("0.0.0.0:{}/tcp", p(0)));
    assert_eq!(web["verdict"], "taken", "{v:#?}");
    assert_eq!(web["holders"][0]["pid"], held.pid, "{v:#?}");
    assert!(
        web["from"][0]
            .as_str()
            .unwrap()
            .ends_with(&format!("compose.yml:5 service web: {}:80", p(0))),
        "{v:#?}"
    );
    // Docker's IPv6 socket has IPV6_V6ONLY: the IPv4 holder is not in its way.
    assert_eq!(
        verdict_of(&v, &format!("[::]:{}/tcp", p(0)))["verdict"],
        "free"
    );
    assert!(!v
        .iter()
        .any(|o| o["from"][0].as_str().unwrap().contains("service dbg")));
    // With the profile, dbg counts, and fails as predicted.
    run.scenario("pwhost", &dir, &["--profile", "debug"], &[]);
    run.down("pwhost", &dir);
    drop(held);

    // Another project's container publishes the port.
    let other = project(
        &docker,
        "other",
        &file(&[service("x", &[&format!("{}:80", p(2))])]),
    );
    let (code, _) = run.scenario("pwother", &other, &[], &[]);
    assert_eq!(code, 0);
    let dir = project(
        &docker,
        "second",
        &file(&[
            service("web", &[&format!("{}:80", p(2))]),
            service("ok", &[&format!("{}:80", p(3))]),
        ]),
    );
    let (_, v) = run.scenario("pwsecond", &dir, &[], &[]);
    let web = verdict_of(&v, &format!("0.0.0.0:{}/tcp", p(2)));
    assert_eq!(web["verdict"], "taken", "{v:#?}");
    assert_eq!(
        web["holders"][0]["container"]["compose"]["project"], "pwother",
        "{v:#?}"
    );
    run.down("pwsecond", &dir);

    // The same project, already up: yours. The project's name is derived
    // from its directory as compose derives it (no -p on either side).
    let dir = docker.dir.join("Pw.Yours");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("compose.yml"),
        file(&[service("web", &[&format!("{}:80", p(2))])]),
    )
    .unwrap();
    let (code, v, _) = check(&ns, &dir, &["-f", "compose.yml"]);
    assert_eq!(code, 1, "pwother holds it: {v:#?}");
    run.down("pwother", &other);
    let up = compose(&docker, &ns, &dir, &["up", "-d"]);
    assert!(up.status.success(), "{up:?}");
    let (code, v, _) = check(&ns, &dir, &["-f", "compose.yml"]);
    assert_eq!(code, 0, "{v:#?}");
    assert!(v.iter().all(|o| o["verdict"] == "yours"), "{v:#?}");
    assert!(
        v[0]["diagnosis"]
            .as_str()
            .unwrap()
            .contains("compose project pwyours"),
        "{v:#?}"
    );
    let again = compose(&docker, &ns, &dir, &["up", "-d", "--force-recreate"]);
    assert!(again.status.success(), "up recreates its own: {again:?}");
    let down = compose(&docker, &ns, &dir, &["down", "-t", "1"]);
    assert!(down.status.success(), "{down:?}");

    // TIME_WAIT only, left by a listener without SO_REUSEADDR: docker-proxy
    // sets it, but both sides must.
    ns.run({
        let port = p(4);
        move || time_wait(port, false)
    });
    let dir = project(
        &docker,
        "tw",
        &file(&[service("web", &[&format!("{}:80", p(4))])]),
    );
    let (_, v) = run.scenario("pwtw", &dir, &[], &[]);
    assert_eq!(
        verdict_of(&v, &format!("0.0.0.0:{}/tcp", p(4)))["verdict"],
        "time-wait",
        "{v:#?}"
    );
    run.down("pwtw", &dir);

    // A range with one port taken.
    let held = ns.run({
        let at = addr(&format!("0.0.0.0:{}", p(5) + 1));
        move || Process::fork(move || hold(at, false, |_| {}))
    });
    let range = format!("{}-{}:8000-8002", p(5), p(5) + 2);
    let dir = project(
        &docker,
        "range",
        &file(&[
            service("range", &[&range]),
            service("ok", &[&format!("{}:80", p(6))]),
        ]),
    );
    let (_, v) = run.scenario("pwrange", &dir, &[], &[]);
    let failing: Vec<&str> = v
        .iter()
        .filter(|o| o["fails"] == true)
        .map(|o| o["binding"].as_str().unwrap())
        .collect();
    assert_eq!(failing, [format!("0.0.0.0:{}/tcp", p(5) + 1)], "{v:#?}");
    run.down("pwrange", &dir);
    drop(held);

    // host_ip not on the host (TEST-NET-1: never assigned here).
    let dir = project(
        &docker,
        "addr",
        &file(&[
            service("web", &[&format!("192.0.2.10:{}:80", p(7))]),
            service("ok", &[&format!("127.0.0.1:{}:80", p(7))]),
        ]),
    );
    let (_, v) = run.scenario("pwaddr", &dir, &[], &[]);
    assert_eq!(
        verdict_of(&v, &format!("192.0.2.10:{}/tcp", p(7)))["verdict"],
        "address-missing",
        "{v:#?}"
    );
    run.down("pwaddr", &dir);

    // Two services, one port: whichever Docker starts second fails.
    let dir = project(
        &docker,
        "two",
        &file(&[
            service("a", &[&format!("{}:80", p(8))]),
            service("b", &[&format!("{}:80", p(8))]),
        ]),
    );
    let (_, v) = run.scenario("pwtwo", &dir, &[], &["a", "b"]);
    let a = verdict_of(&v, &format!("0.0.0.0:{}/tcp", p(8)));
    assert_eq!(a["verdict"], "conflict-in-plan", "{v:#?}");
    assert!(
        a["diagnosis"].as_str().unwrap().contains("service b:"),
        "{v:#?}"
    );
    run.down("pwtwo", &dir);
}

/// With `userland-proxy=false`, dockerd itself listens on a published
/// port (IPv4 only, seen with Debian's docker.io 20.10: no `[::]`
/// socket): taken, named by its container; yours for its own project.
#[test]
fn compose_with_userland_proxy_off() {
    let ns = Arc::new(netns("pw-chk-noproxy"));
    let docker = Docker::start(ns.clone(), "chk-noproxy", &["--userland-proxy=false"]);
    let run = Run {
        docker: &docker,
        ns: &ns,
    };
    let port = port();
    let first = project(
        &docker,
        "first",
        &file(&[service("x", &[&format!("{port}:80")])]),
    );
    run.scenario("pwfirst", &first, &[], &[]);
    let (code, v, _) = check(&ns, &first, &["-f", "compose.yml", "-p", "pwfirst"]);
    assert_eq!(code, 0, "{v:#?}");
    assert_eq!(
        verdict_of(&v, &format!("0.0.0.0:{port}/tcp"))["verdict"],
        "yours",
        "{v:#?}"
    );
    let dir = project(
        &docker,
        "then",
        &file(&[service("web", &[&format!("{port}:80")])]),
    );
    let (_, v) = run.scenario("pwthen", &dir, &[], &[]);
    let web = verdict_of(&v, &format!("0.0.0.0:{port}/tcp"));
    assert_eq!(web["verdict"], "taken", "{v:#?}");
    assert_eq!(web["holders"][0]["comm"], "dockerd", "{v:#?}");
    assert_eq!(
        web["holders"][0]["container"]["compose"]["project"], "pwfirst",
        "{v:#?}"
    );
    assert_eq!(
        verdict_of(&v, &format!("[::]:{port}/tcp"))["verdict"],
        "free",
        "{v:#?}"
    );
    run.down("pwthen", &dir);
    run.down("pwfirst", &first);
}

/// The bindings `docker-compose config` resolves for each service, as
/// `0.0.0.0:P/tcp` strings (Docker's two wildcards for no host_ip), and
/// its container-only ports by count.
fn config_bindings(yaml: &str) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, usize>) {
    let docs = Yaml::load_from_str(yaml).expect("docker-compose config prints YAML");
    let services = &docs[0]["services"];
    let (mut bound, mut random) = (BTreeMap::new(), BTreeMap::new());
    for (name, svc) in services.as_mapping().unwrap() {
        let name = name.as_str().unwrap().to_owned();
        let list: &mut Vec<String> = bound.entry(name.clone()).or_default();
        let count: &mut usize = random.entry(name).or_default();
        let Some(ports) = svc.as_mapping_get("ports").and_then(Yaml::as_sequence) else {
            continue;
        };
        for p in ports {
            let (ip, published, proto) = match p {
                Yaml::Value(Scalar::String(s)) => {
                    // `IP:PUB:TARGET/PROTO` (legacy form, with an address).
                    let (rest, proto) = s.rsplit_once('/').unwrap();
                    let (rest, _target) = rest.rsplit_once(':').unwrap();
                    let (ip, published) = rest.rsplit_once(':').unwrap();
                    (
                        Some(ip.to_owned()),
                        published.parse::<u16>().ok(),
                        proto.to_owned(),
                    )
                }
                _ => (
                    None,
                    p.as_mapping_get("published")
                        .and_then(Yaml::as_integer)
                        .map(|n| n as u16),
                    p.as_mapping_get("protocol")
                        .and_then(Yaml::as_str)
                        .unwrap_or("tcp")
                        .to_owned(),
                ),
            };
            let Some(published) = published else {
                *count += 1;
                continue;
            };
            let addrs = match ip {
                Some(ip) if ip.contains(':') => vec![format!("[{ip}]")],
                Some(ip) => vec![ip],
                None => vec!["0.0.0.0".to_owned(), "[::]".to_owned()],
            };
            list.extend(
                addrs
                    .into_iter()
                    .map(|a| format!("{a}:{published}/{proto}")),
            );
        }
        list.sort();
    }
    (bound, random)
}

/// The same from check's answer.
fn check_bindings(
    verdicts: &[Value],
    unchecked: &[Value],
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, usize>) {
    let (mut bound, mut random) = (
        BTreeMap::<String, Vec<String>>::new(),
        BTreeMap::<String, usize>::new(),
    );
    for v in verdicts {
        bound
            .entry(service_of(v["from"][0].as_str().unwrap()))
            .or_default()
            .push(v["binding"].as_str().unwrap().to_owned());
    }
    for u in unchecked {
        let svc = service_of(u["unchecked"].as_str().unwrap());
        if u["why"]
            .as_str()
            .unwrap()
            .starts_with("Docker picks a free host port:")
        {
            *random.entry(svc).or_default() += 1;
        }
    }
    for l in bound.values_mut() {
        l.sort();
    }
    (bound, random)
}

/// Interpolation (environment over `.env`, defaults, `$$`), merging of
/// two files, `--env-file`, both syntaxes and ranges: portwatch's reader
/// and the real `docker-compose config` resolve the same ports.
#[test]
fn reader_agrees_with_docker_compose_config() {
    let dir = std::env::temp_dir().join(format!("pw-chk-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = r#"services:
  web:
    image: pwtest:1
    labels: {price: "$$5"}
    ports:
      - "${WEB_PORT}:80"
      - "$HOST_IP:${UDP_PORT:-5353}:53/udp"
      - "${RANGE_START:-7000}-${RANGE_END:-7002}:8000-8002"
      - "[::1]:9100:9100"
      - "::1:9101:9101"
      - 9090
      - "7100-7101"
      - "127.0.0.1::83"
      - target: 81
        published: "${LONG-8181}"
        protocol: udp
      - target: 82
        published: 8282
        mode: host
      - "${EMPTY:-6001}:6001"
      - "${EMPTY-}6002:6002"
  db:
    image: pwtest:1
    profiles: [db]
    ports: ["${DB_PORT:?set DB_PORT}:5432"]
"#;
    let over = "services:\n  web:\n    ports:\n      - \"8089:80\"\n      - \"8443:443\"\n  cache:\n    image: pwtest:1\n    ports: [\"6379:6379\", \"127.0.0.1:6380:6379/udp\"]\n";
    std::fs::write(dir.join("compose.yml"), base).unwrap();
    std::fs::write(dir.join("override.yml"), over).unwrap();
    std::fs::write(
        dir.join(".env"),
        "# the project's\nWEB_PORT=8088\nHOST_IP=127.0.0.1\nexport DB_PORT=\"5433\"\nEMPTY=\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("alt.env"),
        "WEB_PORT=9999\nHOST_IP='127.0.0.2'\nDB_PORT=5434 # comment\nRANGE_START=7500\nRANGE_END=7502\nLONG=8383\n",
    )
    .unwrap();
    let ns = netns("pw-chk-config");
    let env = [
        ("WEB_PORT", "8089"),
        ("UDP_PORT", "5454"),
        ("COMPOSE_PROFILES", "db"),
    ];
    let cases: [&[&str]; 3] = [
        &["-f", "compose.yml"],
        &["-f", "compose.yml", "-f", "override.yml"],
        &["--env-file", "alt.env", "-f", "compose.yml"],
    ];
    for (i, files) in cases.iter().enumerate() {
        // WEB_PORT from the environment wins over .env's, but not in the
        // third case: run it without.
        let env: Vec<(&str, &str)> = env
            .iter()
            .copied()
            .filter(|(k, _)| i < 2 || *k != "WEB_PORT")
            .collect();
        let mut cfg = Command::new("docker-compose");
        cfg.args(*files).arg("config").current_dir(&dir);
        for (k, v) in &env {
            cfg.env(k, v);
        }
        cfg.env_remove("COMPOSE_FILE");
        let out = cfg.output().expect("docker-compose config");
        assert!(
            out.status.success(),
            "case {i}: docker-compose config: {out:?}"
        );
        let want = config_bindings(&String::from_utf8_lossy(&out.stdout));

        let args: Vec<String> = files
            .iter()
            .map(|&a| a.to_owned())
            .chain(["--json".into()])
            .collect();
        let (dir2, env2): (PathBuf, Vec<(String, String)>) = (
            dir.clone(),
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let out = ns.run(move || {
            let mut c = Command::new(bin());
            c.arg("check").args(&args).current_dir(dir2);
            c.env_remove("WEB_PORT");
            for (k, v) in env2 {
                c.env(k, v);
            }
            c.output().expect("run portwatch check")
        });
        let (mut verdicts, mut unchecked) = (Vec::new(), Vec::new());
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            if v.get("unchecked").is_some() {
                unchecked.push(v);
            } else {
                verdicts.push(v);
            }
        }
        assert!(out.status.code() != Some(2), "check: {out:?}");
        let got = check_bindings(&verdicts, &unchecked);
        assert_eq!(got.0, want.0, "case {i} {files:?}: published");
        assert_eq!(
            got.1
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect::<BTreeMap<_, _>>(),
            want.1
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect::<BTreeMap<_, _>>(),
            "case {i} {files:?}: container-only ports"
        );
        assert!(!got.0.is_empty());
    }
    // And the unset ${DB_PORT:?}: both refuse, check with the file's line.
    std::fs::write(dir.join(".env"), "WEB_PORT=1\n").unwrap();
    let cfg = Command::new("docker-compose")
        .args(["-f", "compose.yml", "config"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!cfg.status.success(), "{cfg:?}");
    assert!(
        String::from_utf8_lossy(&cfg.stderr).contains("set DB_PORT"),
        "{cfg:?}"
    );
    let out = run_check(&ns, &dir, &["-f", "compose.yml"], false);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("compose.yml:25:13: a required variable is missing"),
        "{err}"
    );
    assert!(err.trim_end().ends_with(": set DB_PORT"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad input: one line on stderr, nothing on stdout, exit 2.
#[test]
fn compose_bad_input_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("pw-chk-badcompose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    w("syntax.yml", "services:\n  web:\n    ports: [\"8080:80\"\n");
    w(
        "port.yml",
        "services:\n  web:\n    ports:\n      - \"80:80:80:80\"\n",
    );
    w(
        "var.yml",
        "services:\n  web:\n    ports:\n      - \"${PW_UNSET_PORT:?give PW_UNSET_PORT}:80\"\n",
    );
    std::os::unix::fs::symlink("/dev/null", dir.join("device.yml")).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("dir.yml")).unwrap();
    let big = std::fs::File::create(dir.join("big.yml")).unwrap();
    big.set_len(50 << 20).unwrap();
    let ns = netns("pw-chk-badyml");
    let cases = [
        ("syntax.yml", "syntax.yml:4:1: YAML syntax error"),
        ("port.yml", "port.yml:4:9: unknown port syntax \"80:80:80:80\""),
        ("var.yml", "var.yml:4:9: a required variable is missing in \"${PW_UNSET_PORT:?give PW_UNSET_PORT}:80\": give PW_UNSET_PORT"),
        ("missing.yml", "missing.yml: cannot open: No such file or directory"),
        ("device.yml", "device.yml: not a regular file (a symlink to something else)"),
        ("dir.yml", "dir.yml: not a regular file (a symlink to something else)"),
        ("big.yml", "big.yml: 52428800 bytes is too large"),
    ];
    for (f, want) in cases {
        let out = run_check(&ns, &dir, &["-f", f], false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{f}: {out:?}");
        assert!(out.stdout.is_empty(), "{f}: {out:?}");
        assert_eq!(err.lines().count(), 1, "{f}: {err}");
        assert!(err.contains(want), "{f}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Names from the file reach a terminal escaped, and JSON as they are.
#[test]
fn compose_strings_are_escaped_in_both_outputs() {
    let dir = std::env::temp_dir().join(format!("pw-chk-esccompose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = port();
    std::fs::write(
        dir.join("compose.yml"),
        format!("services:\n  \"we\\eb\\x07\":\n    ports: [\"{port}:80\", \"9090\"]\n"),
    )
    .unwrap();
    let ns = netns("pw-chk-escyml");
    let out = run_check(&ns, &dir, &["-f", "compose.yml"], false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text}"
    );
    assert!(text.contains("service we?b?:"), "{text}");
    let (_, v, u) = check(&ns, &dir, &["-f", "compose.yml"]);
    assert!(
        v[0]["from"][0]
            .as_str()
            .unwrap()
            .contains("service we\u{1b}b\u{7}:"),
        "{v:#?}"
    );
    assert!(
        u[0]["unchecked"]
            .as_str()
            .unwrap()
            .contains("we\u{1b}b\u{7}"),
        "{u:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
