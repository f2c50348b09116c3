//! The chart's README lists every value with its default and its `# --`
//! comment, generated from values.yaml (as helm-docs does). Out of date, this
//! test fails; `GPU_SHOPPER_BLESS=1 cargo test --test chart_readme` rewrites it.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const START: &str = "<!-- values:start -->";
const END: &str = "<!-- values:end -->";

/// One row per leaf value: its dotted path, default and description.
fn rows(values: &str) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    let mut path: Vec<(usize, String, String)> = Vec::new(); // (indent, key, description)
    let mut pending: Vec<String> = Vec::new();
    let lines: Vec<&str> = values.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(doc) = trimmed.strip_prefix("# --") {
            pending = vec![doc.trim().to_string()];
            continue;
        }
        if let Some(more) = trimmed.strip_prefix('#') {
            if !pending.is_empty() {
                pending.push(more.trim().to_string());
            }
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else { continue };
        if key.is_empty() || key.starts_with('-') || key.contains(' ') {
            continue;
        }
        while path.last().is_some_and(|(i, _, _)| *i >= indent) {
            path.pop();
        }
        let (value, inline) = match rest.split_once(" #") {
            Some((v, c)) => (v.trim(), c.trim().to_string()),
            None => (rest.trim(), String::new()),
        };
        let own = if pending.is_empty() { inline } else { pending.join(" ") };
        pending.clear();
        let inherited = path.iter().rev().map(|(_, _, d)| d.as_str()).find(|d| !d.is_empty()).unwrap_or("");
        let description = if own.is_empty() { inherited.to_string() } else { own };
        // A key with nothing after it opens a map, unless the next line is a list item or less indented.
        let next_indent = lines[i + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| l.len() - l.trim_start().len());
        if value.is_empty() && next_indent.is_some_and(|n| n > indent) {
            path.push((indent, key.to_string(), description));
            continue;
        }
        let dotted: Vec<&str> = path.iter().map(|(_, k, _)| k.as_str()).chain([key]).collect();
        rows.push((dotted.join("."), value.to_string(), description));
    }
    rows
}

fn table(values: &str) -> String {
    let mut out = String::from("| value | default | description |\n| --- | --- | --- |\n");
    for (path, default, description) in rows(values) {
        let default =
            if default.is_empty() { "`\"\"`".to_string() } else { format!("`{}`", default.replace('|', "\\|")) };
        out.push_str(&format!("| `{path}` | {default} | {} |\n", description.replace('|', "\\|")));
    }
    out
}

#[test]
fn the_chart_readme_lists_every_value_as_values_yaml_says() {
    let values = std::fs::read_to_string(format!("{ROOT}/charts/gpu-shopper/values.yaml")).unwrap();
    let readme_path = format!("{ROOT}/charts/gpu-shopper/README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (head, rest) = readme.split_once(START).expect("README has the values markers");
    let (_, tail) = rest.split_once(END).expect("README has the values markers");
    let wanted = format!("{head}{START}\n{}{END}{tail}", table(&values));
    if std::env::var("GPU_SHOPPER_BLESS").is_ok() {
        std::fs::write(&readme_path, &wanted).unwrap();
    }
    assert!(
        readme == wanted,
        "charts/gpu-shopper/README.md is stale: run `GPU_SHOPPER_BLESS=1 cargo test --test chart_readme`"
    );
    for key in ["deploymentId", "image.digest", "extraEnv", "aggregatedRoles.enabled", "limits.maxSessionDuration"] {
        assert!(readme.contains(&format!("| `{key}` |")), "{key}");
    }
}
