//! Property test: parsing and validating mutated pipeline files never panics, and
//! every finding can be placed in its file.

use std::path::Path;

use proptest::prelude::*;
use wald::pipeline::load_pipeline_text;

fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = Vec::new();
    for dir in ["pipelines", "pipelines/examples"] {
        for entry in std::fs::read_dir(root.join(dir))
            .expect("examples exist")
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "toml") {
                texts.push(std::fs::read_to_string(entry.path()).expect("readable example"));
            }
        }
    }
    texts
}

/// One edit of a text: replace, insert or delete a run of characters.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, String),
    Insert(usize, String),
    Delete(usize, usize),
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\\[\\]{}=\"'.,#$ \n\t]{1,4}",
        "[a-z_]{1,12}",
        Just("${".to_string()),
        Just("[[target]]\n".to_string()),
        Just("type = \"kafka\"\n".to_string()),
        Just("\u{0}\u{feff}é".to_string()),
        "-?[0-9]{1,20}(\\.[0-9]+)?",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), fragment()).prop_map(|(at, s)| Edit::Replace(at, s)),
        (any::<usize>(), fragment()).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| {
        if chars.is_empty() {
            0
        } else {
            i % (chars.len() + 1)
        }
    };
    let (start, end, insert) = match edit {
        Edit::Replace(i, s) => (
            at(*i),
            (at(*i) + s.chars().count()).min(chars.len()),
            s.as_str(),
        ),
        Edit::Insert(i, s) => (at(*i), at(*i), s.as_str()),
        Edit::Delete(i, n) => (at(*i), (at(*i) + n).min(chars.len()), ""),
    };
    let mut out: String = chars[..start].iter().collect();
    out.push_str(insert);
    out.extend(&chars[end..]);
    out
}

fn env(name: &str) -> Option<String> {
    (name.len() % 2 == 0).then(|| "value".to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_pipeline_files_never_panic(seed in 0usize..64, edits in proptest::collection::vec(edit(), 1..8)) {
        let seeds = seeds();
        let mut text = seeds[seed % seeds.len()].clone();
        for e in &edits {
            text = apply(&text, e);
        }
        let (source, _, findings) = load_pipeline_text(Path::new("fuzz.toml"), &text, &env);
        for finding in findings {
            let placed = source.place(finding);
            let _ = placed.render();
            prop_assert!(!placed.message.is_empty());
        }
    }
}
