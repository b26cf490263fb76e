//! The socket unit reader: systemd's address forms, settings and lookup.

use super::*;

const DUAL: Kernel = Kernel {
    ipv6: true,
    bindv6only: false,
};

fn unit(text: &str) -> Result<Plan, InputError> {
    parse("demo.socket", &[("demo.socket".into(), text.into())], DUAL)
}

fn label(e: &Entry) -> String {
    let mut s = crate::preflight::label(&e.binding);
    for n in e.binding.opts.names() {
        s.push(' ');
        s.push_str(n);
    }
    if let Some(d) = &e.binding.device {
        s.push_str(&format!(" dev {d}"));
    }
    s
}

fn labels(p: &Plan) -> Vec<String> {
    p.entries.iter().map(label).collect()
}

#[test]
fn addresses_as_systemd_reads_them() {
    let p = unit(
        "[Unit]\nDescription=x\n[Socket]\nListenStream=8080\nListenStream=127.0.0.1:8081\n\
         ListenStream=[::1]:8082\nListenDatagram=0.0.0.0:53\nListenStream=[fe80::1]:8083%%lo\n\
         ListenStream=/run/demo.sock\nListenSequentialPacket=@abstract\nListenFIFO=/run/f\n\
         ListenStream=vsock:2:1234\n",
    )
    .unwrap();
    assert_eq!(
        labels(&p),
        [
            // A bare port: [::] without IPV6_V6ONLY (bindv6only is 0).
            "[::]:8080/tcp reuseaddr",
            "127.0.0.1:8081/tcp reuseaddr",
            "[::1]:8082/tcp reuseaddr",
            "0.0.0.0:53/udp reuseaddr",
            "[fe80::1]:8083/tcp reuseaddr",
        ]
    );
    assert_eq!(p.unchecked.len(), 4);
    let o = &p.entries[0].from[0];
    assert_eq!((o.line, o.what.as_str()), (Some(4), "ListenStream=8080"));
    // Without IPv6 in the kernel, a bare port is the IPv4 wildcard.
    let v4 = parse(
        "d.socket",
        &[("d.socket".into(), "[Socket]\nListenStream=80\n".into())],
        Kernel {
            ipv6: false,
            bindv6only: false,
        },
    )
    .unwrap();
    assert_eq!(labels(&v4), ["0.0.0.0:80/tcp reuseaddr"]);
}

#[test]
fn settings_apply_to_every_listen() {
    let p = unit(
        "[Socket]\nListenStream=80\nListenStream=[::]:81\nBindIPv6Only=ipv6-only\nReusePort=yes\n\
         FreeBind=true\nBindToDevice=eth0\n",
    )
    .unwrap();
    assert_eq!(
        labels(&p),
        [
            "[::]:80/tcp reuseaddr reuseport v6only freebind dev eth0",
            "[::]:81/tcp reuseaddr reuseport v6only freebind dev eth0",
        ]
    );
    let both = unit("[Socket]\nListenStream=80\nBindIPv6Only=both\n").unwrap();
    assert_eq!(labels(&both), ["[::]:80/tcp reuseaddr"]);
    // default follows net.ipv6.bindv6only.
    let p = parse(
        "d.socket",
        &[("d.socket".into(), "[Socket]\nListenStream=80\n".into())],
        Kernel {
            ipv6: true,
            bindv6only: true,
        },
    )
    .unwrap();
    assert_eq!(labels(&p), ["[::]:80/tcp reuseaddr v6only"]);
}

#[test]
fn an_empty_assignment_resets_and_drop_ins_add() {
    let p = parse(
        "demo.socket",
        &[
            (
                "demo.socket".into(),
                "[Socket]\nListenStream=80\nListenDatagram=53\n".into(),
            ),
            (
                "demo.socket.d/10.conf".into(),
                "[Socket]\nListenStream=\nListenStream=8080\n".into(),
            ),
            (
                "demo.socket.d/20.conf".into(),
                "[Socket]\nListenStream=\\\n  9090\n".into(),
            ),
        ],
        DUAL,
    )
    .unwrap();
    assert_eq!(
        labels(&p),
        ["[::]:8080/tcp reuseaddr", "[::]:9090/tcp reuseaddr"]
    );
    assert_eq!(
        p.entries[1].from[0].place().unwrap(),
        "demo.socket.d/20.conf:2"
    );
}

#[test]
fn bad_values_are_errors_at_their_line() {
    for (text, what) in [
        ("[Socket]\nListenStream=99999\n", "ListenStream=99999: port 99999 is out of range (1-65535)"),
        ("[Socket]\nListenStream=0\n", "ListenStream=0: port 0 is out of range (1-65535)"),
        ("[Socket]\nListenStream=localhost:80\n", "ListenStream=localhost:80: 'localhost' is not an IP address (systemd resolves no names)"),
        ("[Socket]\nListenStream=::1\n", "ListenStream=::1: an IPv6 address needs brackets and a port: [ADDR]:PORT"),
        ("[Socket]\nListenStream=1.2.3.4\n", "ListenStream=1.2.3.4: not PORT, ADDR:PORT, [ADDR]:PORT (each with an optional %IFNAME), a path or vsock:CID:PORT"),
        ("[Socket]\nReusePort=maybe\n", "ReusePort=maybe: not a boolean (yes or no)"),
        ("[Socket]\nBindIPv6Only=no\n", "BindIPv6Only=no: not default, both or ipv6-only"),
        ("[Socket]\nListenStream=%q\n", "specifier %q in '%q' is not one portwatch reads"),
    ] {
        let e = unit(text).unwrap_err();
        assert_eq!((e.line, e.what.as_str()), (Some(2), what), "{text}");
    }
    let e = unit("[Service]\nExecStart=/bin/true\n").unwrap_err();
    assert!(
        e.what.contains("not a socket unit systemd would start"),
        "{e}"
    );
}

#[test]
fn specifiers_of_templates() {
    let p = parse(
        "web@8081.socket",
        &[(
            "web@.socket".into(),
            "[Socket]\nListenStream=127.0.0.1:%i\n".into(),
        )],
        DUAL,
    )
    .unwrap();
    assert_eq!(labels(&p), ["127.0.0.1:8081/tcp reuseaddr"]);
}

#[test]
fn found_where_systemd_looks() {
    let root = std::env::temp_dir().join(format!("pw-unit-find-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (etc, lib) = (root.join("etc"), root.join("lib"));
    for d in [&etc, &lib] {
        std::fs::create_dir_all(d.join("demo.socket.d")).unwrap();
    }
    std::fs::write(lib.join("demo.socket"), "[Socket]\nListenStream=1\n").unwrap();
    std::fs::write(lib.join("web@.socket"), "[Socket]\nListenStream=2\n").unwrap();
    std::fs::write(lib.join("demo.socket.d/a.conf"), "").unwrap();
    std::fs::write(lib.join("demo.socket.d/b.conf"), "").unwrap();
    std::fs::write(etc.join("demo.socket.d/b.conf"), "").unwrap();
    std::fs::write(etc.join("demo.socket.d/c.txt"), "").unwrap();
    std::os::unix::fs::symlink("/dev/null", etc.join("masked.socket")).unwrap();
    let dirs = [etc.to_str().unwrap(), lib.to_str().unwrap()];
    let f = find("demo", &dirs).unwrap();
    assert_eq!(f.name, "demo.socket");
    assert_eq!(f.main, lib.join("demo.socket"));
    assert_eq!(
        f.dropins,
        [
            lib.join("demo.socket.d/a.conf"),
            etc.join("demo.socket.d/b.conf")
        ]
    );
    assert_eq!(
        find("web@80.socket", &dirs).unwrap().main,
        lib.join("web@.socket")
    );
    assert!(find("masked.socket", &dirs)
        .unwrap_err()
        .what
        .contains("masked"));
    assert!(find("gone.socket", &dirs)
        .unwrap_err()
        .what
        .starts_with("no unit file gone.socket"));
    assert!(find("demo.service", &dirs)
        .unwrap_err()
        .what
        .starts_with("not a socket unit"));
    assert!(find("/x/demo.service", &dirs)
        .unwrap_err()
        .what
        .starts_with("not a socket unit"));
    let _ = std::fs::remove_dir_all(&root);
}
