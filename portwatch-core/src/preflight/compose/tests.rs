//! The compose reader on files written here; the same rules against the
//! real `docker-compose config` are in portwatch/tests/check_compose.rs.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::*;
use crate::preflight::label;

/// A project directory of the test's own, with `files` in it.
fn project(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("pw-compose-unit-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    dir
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn read_in(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> Result<Plan, InputError> {
    let input = ComposeInput {
        files: files.iter().map(|f| dir.join(f)).collect(),
        ..ComposeInput::default()
    };
    read(&input, &env_of(env))
}

/// `binding  what` for each entry, `? what: why` for each unchecked.
fn lines(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .entries
        .iter()
        .map(|e| {
            let o = &e.from[0];
            format!("{} :{} {}", label(&e.binding), o.line.unwrap(), o.what)
        })
        .collect();
    out.extend(
        plan.unchecked
            .iter()
            .map(|u| format!("? :{} {}", u.from.line.unwrap(), u.from.what)),
    );
    out
}

const ONE: &str = r#"services:
  web:
    image: x
    ports:
      - "8080:80"
      - "127.0.0.1:9000:9000/udp"
      - "8000-8001:8000-8001"
      - "[::1]:9100:9100"
      - 9090
      - "127.0.0.1::83"
      - target: 81
        published: "8181"
        protocol: udp
        mode: host
      - target: 82
        published: 8282
        host_ip: 127.0.0.2
"#;

#[test]
fn both_syntaxes_with_docker_s_two_wildcards() {
    let dir = project("My.Shop", &[("compose.yml", ONE)]);
    let plan = read_in(&dir, &["compose.yml"], &[]).unwrap();
    assert_eq!(
        lines(&plan),
        [
            "0.0.0.0:8080/tcp :5 service web: 8080:80",
            "[::]:8080/tcp :5 service web: 8080:80",
            "127.0.0.1:9000/udp :6 service web: 127.0.0.1:9000:9000/udp",
            "0.0.0.0:8000/tcp :7 service web: 8000-8001:8000-8001",
            "[::]:8000/tcp :7 service web: 8000-8001:8000-8001",
            "0.0.0.0:8001/tcp :7 service web: 8000-8001:8000-8001",
            "[::]:8001/tcp :7 service web: 8000-8001:8000-8001",
            "[::1]:9100/tcp :8 service web: [::1]:9100:9100",
            "0.0.0.0:8181/udp :11 service web: 8181:81/udp",
            "[::]:8181/udp :11 service web: 8181:81/udp",
            "127.0.0.2:8282/tcp :15 service web: 127.0.0.2:8282:82",
            "? :9 service web: 9090",
            "? :10 service web: 127.0.0.1::83",
        ]
    );
    let e = &plan.entries[1];
    assert!(e.binding.opts.v6only && e.binding.opts.reuseaddr, "{e:?}");
    assert!(
        !plan.entries[8].binding.opts.reuseaddr,
        "UDP: no SO_REUSEADDR"
    );
    assert_eq!(
        e.ours,
        Some(Ours::Compose {
            project: "myshop".into()
        })
    );
    assert!(plan.unchecked[0]
        .why
        .contains("Docker picks a free host port"));
}

#[test]
fn interpolation_as_compose_does_it() {
    let file = r#"services:
  web:
    ports:
      - "${A}:80"
      - "$B:81"
      - "${C:-8082}:82"
      - "${EMPTY:-8083}:83"
      - "127.0.0.1:${EMPTY-8084}:84"
      - "${UNSET-8085}:85"
      - "${A:?A is needed}${EMPTY?}:86"
      - target: 87
        published: "${FROM_DOTENV}"
    labels:
      cost: "$$5"
"#;
    let dir = project(
        "interp",
        &[
            ("compose.yml", file),
            (
                ".env",
                "# comment\nFROM_DOTENV=8087\nexport A=1111 # overridden\n",
            ),
        ],
    );
    let plan = read_in(
        &dir,
        &["compose.yml"],
        &[("A", "8080"), ("B", "8081"), ("EMPTY", "")],
    )
    .unwrap();
    let ports: Vec<u16> = plan
        .entries
        .iter()
        .step_by(2)
        .map(|e| e.binding.port)
        .collect();
    // ${EMPTY-8084} is set (empty): no host port, Docker picks one.
    assert_eq!(ports, [8080, 8081, 8082, 8083, 8085, 8080, 8087]);
    assert_eq!(plan.unchecked.len(), 1, "{:?}", plan.unchecked);
    assert_eq!(plan.unchecked[0].from.line, Some(8));
}

#[test]
fn unset_required_variable_is_file_line_col() {
    let dir = project(
        "required",
        &[(
            "compose.yml",
            "services:\n  web:\n    environment:\n      PW: \"${PW:?set PW first}\"\n",
        )],
    );
    let e = read_in(&dir, &["compose.yml"], &[]).unwrap_err();
    let line = e.to_string();
    assert!(line.ends_with("compose.yml:4:11: a required variable is missing in \"${PW:?set PW first}\": set PW first"), "{line}");
    let e = read_in(&dir, &["compose.yml"], &[("PW", "")]).unwrap_err();
    assert!(e.to_string().ends_with(": set PW first"), "{e}");
    assert!(read_in(&dir, &["compose.yml"], &[("PW", "x")]).is_ok());
    let dir = project(
        "invalid",
        &[("compose.yml", "services:\n  web:\n    image: \"a$\"\n")],
    );
    let e = read_in(&dir, &["compose.yml"], &[]).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("compose.yml:3:12: invalid interpolation format in \"a$\""),
        "{e}"
    );
}

#[test]
fn files_merge_as_docker_compose_1_29_merges_them() {
    let base = "services:\n  web:\n    ports:\n      - \"9000:90\"\n      - \"8080:80\"\n  db:\n    ports: [\"5432:5432\"]\n";
    let over = "services:\n  web:\n    ports:\n      - \"8080:80\"\n      - \"8443:443\"\n  cache:\n    ports: [\"6379:6379\"]\n  db:\n    network_mode: host\n";
    let dir = project("merge", &[("compose.yml", base), ("override.yml", over)]);
    let plan = read_in(&dir, &["compose.yml", "override.yml"], &[]).unwrap();
    assert_eq!(
        lines(&plan),
        [
            // Sorted by target; the override's 8080:80 replaced the base's.
            "0.0.0.0:8080/tcp :4 service web: 8080:80",
            "[::]:8080/tcp :4 service web: 8080:80",
            "0.0.0.0:9000/tcp :4 service web: 9000:90",
            "[::]:9000/tcp :4 service web: 9000:90",
            "0.0.0.0:8443/tcp :5 service web: 8443:443",
            "[::]:8443/tcp :5 service web: 8443:443",
            "0.0.0.0:6379/tcp :7 service cache: 6379:6379",
            "[::]:6379/tcp :7 service cache: 6379:6379",
            "? :9 service db: network_mode: host",
        ]
    );
    let files: Vec<String> = plan
        .entries
        .iter()
        .map(|e| {
            e.from[0]
                .file
                .as_ref()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(files[0], "override.yml");
    assert_eq!(files[2], "compose.yml");
}

#[test]
fn profiles_count_only_when_active() {
    let file = "services:\n  web:\n    ports: [\"80:80\"]\n  debug:\n    profiles: [debug, dev]\n    ports: [\"9229:9229\"]\n";
    let dir = project("profiles", &[("compose.yml", file)]);
    let ports = |plan: Plan| -> Vec<u16> { plan.entries.iter().map(|e| e.binding.port).collect() };
    assert_eq!(
        ports(read_in(&dir, &["compose.yml"], &[]).unwrap()),
        [80, 80]
    );
    let on = read_in(&dir, &["compose.yml"], &[("COMPOSE_PROFILES", "x,dev")]).unwrap();
    assert_eq!(ports(on), [80, 80, 9229, 9229]);
    let input = ComposeInput {
        files: vec![dir.join("compose.yml")],
        profiles: vec!["debug".into()],
        ..ComposeInput::default()
    };
    assert_eq!(ports(read(&input, &env_of(&[])).unwrap()).len(), 4);
}

#[test]
fn project_name_as_compose_derives_it() {
    let dir = project(
        "Shop.Front_1",
        &[
            ("compose.yml", "services: {}\n"),
            (
                "named.yml",
                "name: \"Named-${N}\"\nservices:\n  a:\n    ports: [\"1:1\"]\n",
            ),
        ],
    );
    let name = |files: &[&str], p: Option<&str>, env: &[(&str, &str)]| {
        let input = ComposeInput {
            files: files.iter().map(|f| dir.join(f)).collect(),
            project: p.map(str::to_owned),
            ..ComposeInput::default()
        };
        let plan = read(&input, &env_of(env)).unwrap();
        match plan.entries.first().and_then(|e| e.ours.clone()) {
            Some(Ours::Compose { project }) => project,
            _ => String::new(),
        }
    };
    assert_eq!(name(&["named.yml"], None, &[("N", "X")]), "named-x");
    assert_eq!(
        name(&["named.yml"], None, &[("COMPOSE_PROJECT_NAME", "Env")]),
        "env"
    );
    assert_eq!(
        name(
            &["named.yml"],
            Some("My Proj!"),
            &[("COMPOSE_PROJECT_NAME", "Env")]
        ),
        "myproj"
    );
    assert_eq!(name(&["compose.yml", "named.yml"], None, &[]), "named-");
    std::fs::write(dir.join("d.yml"), "services:\n  a:\n    ports: [\"1:1\"]\n").unwrap();
    assert_eq!(name(&["d.yml"], None, &[]), "shopfront_1");
}

#[test]
fn bad_input_is_one_line_with_a_place() {
    let cases: [(&str, &str); 6] = [
        (
            "services:\n  web:\n    ports: [\"8080:80\"\n",
            "compose.yml:4:1: YAML syntax error",
        ),
        (
            "services:\n  web:\n    ports:\n      - \"80:80:80:80\"\n",
            "compose.yml:4:9: unknown port syntax \"80:80:80:80\"",
        ),
        (
            "services:\n  web:\n    ports:\n      - \"8080:80/http\"\n",
            "compose.yml:4:9: unknown port syntax \"8080:80/http\": protocol \"http\"",
        ),
        (
            "services:\n  web:\n    ports:\n      - \"8000-8002:80-81\"\n",
            "port ranges don't match in length",
        ),
        (
            "services:\n  web:\n    ports:\n      - target: 80\n        published: x\n",
            "compose.yml:5:20: `published:` is not a port or range",
        ),
        (
            "web:\n  image: x\n",
            "compose.yml:2:3: \"web\" at the top level: a version 1 compose file",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let dir = project(&format!("bad{i}"), &[("compose.yml", text)]);
        let e = read_in(&dir, &["compose.yml"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{i}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn merge_keys_and_anchors() {
    let file = "x-ports: &p\n  ports: [\"7000:7000\"]\nservices:\n  a:\n    <<: *p\n  b:\n    <<: *p\n    ports: [\"7001:7001\"]\n";
    let dir = project("anchors", &[("compose.yml", file)]);
    let plan = read_in(&dir, &["compose.yml"], &[]).unwrap();
    let ports: Vec<(String, u16)> = plan
        .entries
        .iter()
        .step_by(2)
        .map(|e| (e.from[0].what.clone(), e.binding.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("service a: 7000:7000".to_owned(), 7000),
            ("service b: 7001:7001".to_owned(), 7001)
        ]
    );
}

#[test]
fn what_cannot_be_read_is_said() {
    let file = "include: [other.yml]\nservices:\n  a:\n    extends: {service: b}\n    ports: [\"7000:7000\", \"7001/sctp\", \"7002-7004:80\"]\n  h:\n    network_mode: host\n";
    let dir = project("unread", &[("compose.yml", file)]);
    let plan = read_in(&dir, &["compose.yml"], &[]).unwrap();
    assert_eq!(
        lines(&plan),
        [
            "0.0.0.0:7000/tcp :5 service a: 7000:7000",
            "[::]:7000/tcp :5 service a: 7000:7000",
            "? :1 include",
            "? :4 service a: extends",
            "? :5 service a: 7001/sctp",
            "? :5 service a: 7002-7004:80",
            "? :7 service h: network_mode: host",
        ]
    );
    let why: Vec<&str> = plan.unchecked.iter().map(|u| u.why.as_str()).collect();
    assert!(why[0].contains("name them with -f"), "{why:?}");
    assert!(why[2].contains("TCP and UDP only"), "{why:?}");
    assert!(why[3].contains("in 7002-7004"), "{why:?}");
    assert!(
        why[4].contains("cannot") || why[4].contains("not in the compose file"),
        "{why:?}"
    );
}
