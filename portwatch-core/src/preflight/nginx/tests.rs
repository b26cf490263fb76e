//! The nginx reader: nginx's syntax, includes, and its socket rules (each
//! also checked against the real nginx in portwatch/tests/check_nginx.rs).

use std::net::IpAddr;

use super::*;

/// Names resolve only to what the test says (real resolution is the
/// integration tests', against the real nginx).
fn names(host: &str) -> Result<Vec<IpAddr>, String> {
    match host {
        "both.test" => Ok(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]),
        _ => Err("host not found".into()),
    }
}

fn dir(files: &[(&str, &str)]) -> tempdir::Dir {
    let d = tempdir::Dir::new();
    for (name, text) in files {
        let p = d.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

mod tempdir {
    /// A private directory, removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "pw-nginx-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn read_http(servers: &str) -> Result<Plan, InputError> {
    let d = dir(&[(
        "nginx.conf",
        &format!("events {{}}\nhttp {{\n{servers}\n}}\n"),
    )]);
    let tree = conf::parse(&d.0.join("nginx.conf"), &Files::Disk)?;
    plan(&tree, true, &names)
}

fn labels(p: &Plan) -> Vec<String> {
    p.entries
        .iter()
        .map(|e| {
            let mut s = crate::preflight::label(&e.binding);
            let o = e.binding.opts;
            if o.reuseport {
                s.push_str(" reuseport");
            }
            if o.v6only {
                s.push_str(" v6only");
            }
            s
        })
        .collect()
}

#[test]
fn one_socket_per_address_and_the_wildcard_serves_the_rest() {
    let p = read_http(
        "server { listen 80; listen [::]:80; }\n\
         server { listen 80; listen 127.0.0.1:80; server_name b; }\n\
         server { listen 127.0.0.2:80 bind; server_name c; }\n\
         server { listen 127.0.0.1:81; listen *:82; }",
    )
    .unwrap();
    assert_eq!(
        labels(&p),
        [
            "0.0.0.0:80/tcp",
            "127.0.0.2:80/tcp",
            "[::]:80/tcp v6only",
            "127.0.0.1:81/tcp",
            "0.0.0.0:82/tcp"
        ]
    );
    let e80 = &p.entries[0];
    assert!(e80.binding.opts.reuseaddr);
    let from: Vec<String> = e80.from.iter().map(|o| o.what.clone()).collect();
    assert_eq!(
        from,
        [
            "listen 80",
            "listen 80",
            "listen 127.0.0.1:80 (served by the 0.0.0.0:80/tcp socket)"
        ]
    );
    assert_eq!(e80.from[0].line, Some(3));
    assert_eq!(e80.from[2].line, Some(4));
}

#[test]
fn sockets_in_nginx_order() {
    let p = read_http("server { listen 80; listen [::]:80; listen 127.0.0.2:80 bind; }").unwrap();
    // Per family and port, in order of appearance; the addresses with a
    // socket of their own before the wildcard's only within nginx's own
    // binding order, which check does not depend on.
    let mut l = labels(&p);
    l.sort();
    assert_eq!(
        l,
        ["0.0.0.0:80/tcp", "127.0.0.2:80/tcp", "[::]:80/tcp v6only"]
    );
}

#[test]
fn options_make_sockets_of_their_own() {
    let p = read_http(
        "server { listen 80; }\nserver { listen 127.0.0.1:80 reuseport; server_name a; }\n\
         server { listen [::]:443 ipv6only=off ssl http2 default_server; }\n\
         server { listen 8443 quic reuseport; listen 9000-9001 backlog=10; }",
    )
    .unwrap();
    let mut l = labels(&p);
    l.sort();
    assert_eq!(
        l,
        [
            "0.0.0.0:80/tcp",
            "0.0.0.0:8443/udp reuseport",
            "0.0.0.0:9000/tcp",
            "0.0.0.0:9001/tcp",
            "127.0.0.1:80/tcp reuseport",
            "[::]:443/tcp"
        ]
    );
}

#[test]
fn host_names_bind_every_address() {
    let p = read_http("server { listen both.test:8080; }").unwrap();
    assert_eq!(labels(&p), ["127.0.0.1:8080/tcp", "[::1]:8080/tcp v6only"]);
    let e = read_http("server { listen nowhere.test:80; }").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert_eq!(
        e.what,
        "host not found in \"nowhere.test:80\" of the \"listen\" directive"
    );
}

#[test]
fn default_listen_depends_on_root() {
    let d = dir(&[("n.conf", "http { server { server_name x; } }")]);
    let tree = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap();
    assert_eq!(
        labels(&plan(&tree, true, &names).unwrap()),
        ["0.0.0.0:80/tcp"]
    );
    assert_eq!(
        labels(&plan(&tree, false, &names).unwrap()),
        ["0.0.0.0:8000/tcp"]
    );
    // stream and mail servers need a listen.
    let d = dir(&[("n.conf", "stream { server { proxy_pass x; } }")]);
    let tree = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap();
    assert!(plan(&tree, true, &names)
        .unwrap_err()
        .what
        .starts_with("no \"listen\" is defined for server"));
}

#[test]
fn stream_udp_and_unix_sockets() {
    let d = dir(&[(
        "n.conf",
        "stream {\n server { listen 53 udp; listen 53; }\n server { listen unix:/run/x.sock; }\n}\n\
         http { server { listen 53; } }",
    )]);
    let tree = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap();
    let p = plan(&tree, true, &names).unwrap();
    // http's 53 is a socket of its own: nginx fails on it (conflict in plan).
    assert_eq!(
        labels(&p),
        ["0.0.0.0:53/udp", "0.0.0.0:53/tcp", "0.0.0.0:53/tcp"]
    );
    assert_eq!(p.unchecked.len(), 1);
    assert_eq!(p.unchecked[0].from.line, Some(3));
    let d = dir(&[(
        "n.conf",
        "stream { server { listen 53; } server { listen 53; } }",
    )]);
    let tree = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap();
    assert_eq!(
        plan(&tree, true, &names).unwrap_err().what,
        "duplicate \"0.0.0.0:53\" address and port pair"
    );
}

#[test]
fn nginx_errors_for_an_address_twice() {
    for (servers, what) in [
        (
            "server { listen 80; listen 80; }",
            "a duplicate listen 0.0.0.0:80",
        ),
        (
            "server { listen 80 reuseport; } server { listen 80 backlog=5; server_name b; }",
            "duplicate listen options for 0.0.0.0:80",
        ),
        (
            "server { listen 80 default_server; } server { listen 80 default; server_name b; }",
            "a duplicate default server for 0.0.0.0:80",
        ),
        ("server { listen 80 bogus; }", "invalid parameter \"bogus\""),
        (
            "server { listen [::]:80 ipv6only=maybe; }",
            "invalid ipv6only flags \"maybe\"",
        ),
        (
            "server { listen 0; }",
            "invalid port in \"0\" of the \"listen\" directive",
        ),
        (
            "server { listen 90-80; }",
            "invalid port range in \"90-80\" of the \"listen\" directive",
        ),
        (
            "server { listen [::1; }",
            "invalid host in \"[::1\" of the \"listen\" directive",
        ),
        ("server { listen 53 udp; }", "invalid parameter \"udp\""),
    ] {
        let e = read_http(servers).unwrap_err();
        assert_eq!((e.what.as_str(), e.line), (what, Some(3)), "{servers}");
    }
}

#[test]
fn syntax_as_nginx_reads_it() {
    let p = read_http(
        "# a comment; listen 1;\n server { listen \"8080\" # listen 9;\n default_server; \
         set $x \"a;b}\"; return 200 '${x}'; }",
    )
    .unwrap();
    assert_eq!(labels(&p), ["0.0.0.0:8080/tcp"]);
    assert_eq!(p.entries[0].from[0].line, Some(4));
    for (text, line, col, what) in [
        ("http { server { listen 80 }", 1, 28, "unexpected \"}\""),
        (
            "http { server { listen 80; }",
            1,
            29,
            "unexpected end of file, expecting \"}\"",
        ),
        ("http { }\n}", 2, 2, "unexpected \"}\""),
        (
            "http { listen 80",
            1,
            17,
            "unexpected end of file, expecting \";\" or \"}\"",
        ),
        ("http { \"a\"b; }", 1, 11, "unexpected \"b\""),
    ] {
        let d = dir(&[("n.conf", text)]);
        let e = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap_err();
        assert_eq!(
            (e.line, e.col, e.what.as_str()),
            (Some(line), Some(col), what),
            "{text}"
        );
    }
}

#[test]
fn includes_globs_and_symlinks_as_nginx_follows_them() {
    let d = dir(&[
        (
            "nginx.conf",
            "events {}\nhttp {\n  include sites-enabled/*;\n  include conf.d/one.conf;\n}\n",
        ),
        ("sites-available/b", "server { listen 8002; }\n"),
        ("sites-available/a", "server { listen 8001; }\n"),
        ("sites-enabled/.hidden", "server { listen 8009; }\n"),
        ("conf.d/one.conf", "\n\nserver { listen 8003; }\n"),
    ]);
    for n in ["a", "b"] {
        std::os::unix::fs::symlink(
            d.0.join("sites-available").join(n),
            d.0.join("sites-enabled").join(n),
        )
        .unwrap();
    }
    let tree = conf::parse(&d.0.join("nginx.conf"), &Files::Disk).unwrap();
    let p = plan(&tree, true, &names).unwrap();
    assert_eq!(
        labels(&p),
        ["0.0.0.0:8001/tcp", "0.0.0.0:8002/tcp", "0.0.0.0:8003/tcp"]
    );
    assert_eq!(
        p.entries[2].from[0].place().unwrap(),
        format!("{}:3", d.0.join("conf.d/one.conf").display())
    );
    // A glob that matches nothing is fine; a missing file is not, at the
    // include's place; nor a file that includes itself.
    let d = dir(&[(
        "n.conf",
        "http {\n include none/*.conf;\n include missing.conf;\n}",
    )]);
    let e = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap_err();
    assert_eq!(e.file, Some(d.0.join("missing.conf")));
    assert!(e.what.starts_with("cannot open"), "{e}");
    let d = dir(&[("n.conf", "include n.conf;")]);
    let e = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap_err();
    assert!(e.what.contains("nest deeper"), "{e}");
    // A symlink to a directory (or a FIFO) is refused by read_input.
    let d = dir(&[("n.conf", "include sub;")]);
    std::fs::create_dir(d.0.join("sub")).unwrap();
    let e = conf::parse(&d.0.join("n.conf"), &Files::Disk).unwrap_err();
    assert!(e.what.contains("not a regular file"), "{e}");
}

#[test]
fn the_dump_of_nginx_t() {
    let dump = "# configuration file /etc/nginx/nginx.conf:\nevents {}\nhttp {\n  include sites/*.conf;\n  include sites/a.conf;\n}\n\n\
                # configuration file /etc/nginx/sites/a.conf:\nserver {\n  listen 81;\n}\n\n\
                # configuration file /etc/nginx/sites/b.conf:\nserver { listen 82; }\n\n";
    let (main, files) = split_dump(dump).unwrap();
    assert_eq!(main, Path::new("/etc/nginx/nginx.conf"));
    assert_eq!(files.len(), 3);
    let tree = conf::parse(&main, &Files::Dump(files)).unwrap();
    // a.conf is in the dump once but included twice: two servers, one
    // address each, so nginx itself would refuse "a duplicate listen"?
    // No: two server blocks on one address share one socket.
    let p = plan(&tree, true, &names).unwrap();
    assert_eq!(labels(&p), ["0.0.0.0:81/tcp", "0.0.0.0:82/tcp"]);
    assert_eq!(p.entries[0].from.len(), 2);
    assert_eq!(
        p.entries[0].from[0].place().unwrap(),
        "/etc/nginx/sites/a.conf:2"
    );
    assert!(split_dump("nginx: something else\n").is_err());
}

#[test]
fn nginx_t_errors_become_file_line() {
    use std::os::unix::process::ExitStatusExt as _;
    let failed = |stderr: &str| crate::subprocess::SubprocessError::Failed {
        program: "nginx".into(),
        status: std::process::ExitStatus::from_raw(1 << 8),
        stderr: stderr.into(),
    };
    let e = nginx_failed(failed(
        "2026/12/07 16:16:10 [warn] 1#1: conflicting server name \"\" on 0.0.0.0:80, ignored\n\
         2026/12/07 16:16:10 [emerg] 2948#2948: invalid parameter \"foo\" in /etc/nginx/x.conf:3\n\
         nginx: configuration file /etc/nginx/nginx.conf test failed\n",
    ));
    assert_eq!(
        e.to_string(),
        "/etc/nginx/x.conf:3: invalid parameter \"foo\""
    );
    let e = nginx_failed(failed(
        "nginx: [emerg] host not found in upstream \"app:80\" in /etc/nginx/x.conf:9\n",
    ));
    assert!(e.to_string().starts_with("/etc/nginx/x.conf:9: host not found in upstream \"app:80\" (nginx -T runs in a network namespace of its own"), "{e}");
    let e = nginx_failed(failed(""));
    assert_eq!(e.to_string(), "nginx -T: failed (exit status: 1)");
}

#[test]
fn a_master_names_its_configuration() {
    let d = Path::new("/etc/nginx/nginx.conf");
    assert_eq!(master_conf("/usr/sbin/nginx", d), Some(d.to_path_buf()));
    assert_eq!(
        master_conf("/usr/sbin/nginx -c /tmp/a.conf -e stderr", d),
        Some("/tmp/a.conf".into())
    );
    assert_eq!(
        master_conf("nginx -c/tmp/b.conf", d),
        Some("/tmp/b.conf".into())
    );
    assert_eq!(
        master_conf("nginx -p /srv/ -c conf/n.conf", d),
        Some("/srv/conf/n.conf".into())
    );
    assert_eq!(master_conf("nginx -c conf/n.conf", d), None);
}
