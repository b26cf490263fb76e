//! `portwatch man`: one page per subcommand plus portwatch(8), all in section
//! 8, each rendered by the real man(1), and every page a page names exists.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use common::{bin, Scratch};

fn stdout(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run portwatch");
    assert!(
        out.status.success(),
        "portwatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The subcommands `portwatch --help` lists, but `help`.
fn subcommands() -> Vec<String> {
    let help = stdout(&["--help"]);
    let subs: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_owned)
        .collect();
    assert!(subs.len() >= 5, "subcommands from --help: {subs:?}\n{help}");
    subs
}

/// `man --warnings -l PAGE`, 80 columns: the rendered text.
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man(1) is installed (man-db; cargo xtask test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "man -l {}: {stderr}",
        page.display()
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every `portwatch...(N)` a roff page names, as (name, section).
fn references(roff: &str) -> BTreeSet<(String, String)> {
    let text = roff
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\fI", "");
    let mut refs = BTreeSet::new();
    for (at, _) in text.match_indices("portwatch") {
        let rest = &text[at..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        let after = &rest[name_len..];
        if let Some(section) = after
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        {
            refs.insert((rest[..name_len].to_owned(), section.to_owned()));
        }
    }
    refs
}

#[test]
fn man_dir_writes_one_page_per_subcommand_in_section_8() {
    let scratch = Scratch::new("man");
    let dir = scratch.0.join("man8");
    let listed = stdout(&["man", "--dir", dir.to_str().unwrap()]);
    let listed: BTreeSet<PathBuf> = listed.lines().map(PathBuf::from).collect();

    let mut wanted: BTreeSet<String> = subcommands()
        .iter()
        .map(|s| format!("portwatch-{s}.8"))
        .collect();
    wanted.insert("portwatch.8".into());
    let written: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, wanted, "pages written into {}", dir.display());
    assert_eq!(
        listed,
        wanted.iter().map(|w| dir.join(w)).collect(),
        "the paths it printed"
    );

    let mut all_refs = BTreeSet::new();
    for file in &wanted {
        let page = dir.join(file);
        let name = file.strip_suffix(".8").unwrap();
        let text = render(&page);
        // The header names the page and its section: "PORTWATCH-WHO(8)".
        let header = format!("{}(8)", name.to_uppercase());
        assert!(text.starts_with(&header), "{file} starts: {:.80}", text);
        let see_also = text
            .split_once("\nSEE ALSO\n")
            .unwrap_or_else(|| panic!("{file} has no SEE ALSO:\n{text}"))
            .1;
        assert!(
            see_also.contains("portwatch"),
            "{file}: SEE ALSO {see_also}"
        );

        let roff = std::fs::read_to_string(&page).unwrap();
        assert!(
            roff.contains(&format!(".TH {} 8 ", name.to_uppercase())),
            "{file} is not in section 8"
        );
        let refs = references(&roff);
        for (target, section) in &refs {
            assert_eq!(section, "8", "{file} names {target}({section})");
            assert!(
                target == name || dir.join(format!("{target}.8")).is_file(),
                "{file} names {target}(8), which was not written"
            );
        }
        all_refs.extend(refs.into_iter().map(|(n, _)| n));
    }
    // Every page is named by some other page (portwatch(8) lists them all).
    for file in &wanted {
        let name = file.strip_suffix(".8").unwrap();
        assert!(all_refs.contains(name), "no page names {name}(8)");
    }
}

#[test]
fn man_alone_prints_portwatch_8_and_a_subcommand_its_own() {
    let top = stdout(&["man"]);
    assert!(top.contains(".TH PORTWATCH 8 "), "{top:.300}");
    assert!(top.contains("portwatch\\-who(8)"), "{top}");
    let who = stdout(&["man", "who"]);
    assert!(who.contains(".TH PORTWATCH-WHO 8 "), "{who:.300}");
    assert!(who.contains("EXIT STATUS"), "{who}");

    let bad = Command::new(bin())
        .args(["man", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("'nosuch' is not a subcommand"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
