//! The shape of the code (shared/STYLE.md, habits 9 to 11): arrows run downward
//! only, and a readiness stage is one condition and one file that never calls a
//! sibling. Read from the source with `syn`: every path a file names (its `use`
//! lines and the paths in its code), followed through re-exports to the file
//! that defines the item. `mod` declarations and `#[cfg(test)]` modules are not
//! arrows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// One file of the crate: its module path and what it defines, imports and names.
#[derive(Default)]
struct FileModule {
    file: String,
    /// Items defined here (not modules): types, functions, constants, macros.
    items: BTreeSet<String>,
    /// Child modules declared here, by name, with their module path.
    children: BTreeMap<String, Vec<String>>,
    /// `use` imports: the name they bring into scope and the path it stands for.
    imports: BTreeMap<String, Vec<String>>,
    /// `use x::*`: every path glob-imported.
    globs: Vec<Vec<String>>,
    /// Every path named in the file (use trees and code), as written.
    named: Vec<Vec<String>>,
}

struct Crate {
    modules: BTreeMap<Vec<String>, FileModule>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().contains("test")))
}

fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Option<String>, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                out.push((prefix.last().cloned(), prefix.clone()));
            } else {
                let mut path = prefix.clone();
                path.push(name.clone());
                out.push((Some(name), path));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((Some(r.rename.to_string()), path));
        }
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                flatten_use(tree, prefix, out);
            }
        }
    }
}

/// Collects every multi-segment path in code (types, expressions, patterns, macros' paths).
struct PathCollector<'a> {
    named: &'a mut Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for PathCollector<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if !segments.is_empty() {
            self.named.push(segments);
        }
        syn::visit::visit_path(self, path);
    }
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }
    fn visit_item_use(&mut self, _: &'ast syn::ItemUse) {}
    /// `pub(super)` says who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}

fn read_module(root: &Path, file: &Path, module: Vec<String>, modules: &mut BTreeMap<Vec<String>, FileModule>) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut this =
        FileModule { file: file.strip_prefix(root).unwrap_or(file).display().to_string(), ..Default::default() };
    // A file `x.rs` keeps its children in `x/`; `mod.rs` and `lib.rs` in their own folder.
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let child_dir: PathBuf = if stem == "mod" || stem == "lib" {
        file.parent().expect("a folder").to_path_buf()
    } else {
        file.with_extension("")
    };
    let mut pending_children = Vec::new();
    for item in &parsed.items {
        match item {
            syn::Item::Mod(m) if is_cfg_test(&m.attrs) => {}
            syn::Item::Mod(m) => {
                let name = m.ident.to_string();
                let mut path = module.clone();
                path.push(name.clone());
                this.children.insert(name.clone(), path.clone());
                if m.content.is_none() {
                    let single = child_dir.join(format!("{name}.rs"));
                    let folder = child_dir.join(&name).join("mod.rs");
                    pending_children.push((if single.exists() { single } else { folder }, path));
                }
            }
            syn::Item::Use(u) => {
                let mut flat = Vec::new();
                flatten_use(&u.tree, &mut Vec::new(), &mut flat);
                for (name, path) in flat {
                    this.named.push(path.clone());
                    match name {
                        Some(name) => {
                            this.imports.insert(name, path);
                        }
                        None => this.globs.push(path),
                    }
                }
            }
            syn::Item::Struct(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Enum(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Fn(i) => drop(this.items.insert(i.sig.ident.to_string())),
            syn::Item::Const(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Static(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Type(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Trait(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Union(i) => drop(this.items.insert(i.ident.to_string())),
            syn::Item::Macro(i) => {
                if let Some(ident) = &i.ident {
                    this.items.insert(ident.to_string());
                }
            }
            _ => {}
        }
    }
    let mut collector = PathCollector { named: &mut this.named };
    for item in &parsed.items {
        if !matches!(item, syn::Item::Mod(m) if is_cfg_test(&m.attrs)) {
            collector.visit_item(item);
        }
    }
    modules.insert(module, this);
    for (file, path) in pending_children {
        read_module(root, &file, path, modules);
    }
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let mut modules = BTreeMap::new();
        read_module(root, &root.join("src/lib.rs"), Vec::new(), &mut modules);
        Crate { modules }
    }

    /// The file that defines what `path` (absolute: from the crate root) names, if it is in this crate.
    fn defining_file(&self, path: &[String], depth: usize) -> Option<&str> {
        if depth > 16 {
            return None;
        }
        let mut module: Vec<String> = Vec::new();
        for (i, segment) in path.iter().enumerate() {
            let here = self.modules.get(&module)?;
            if let Some(child) = here.children.get(segment) {
                module = child.clone();
                continue;
            }
            if here.items.contains(segment) {
                return Some(&here.file);
            }
            if let Some(target) = here.imports.get(segment) {
                let absolute = self.absolute(&module, target)?;
                let mut rest = absolute;
                rest.extend_from_slice(&path[i + 1..]);
                return self.defining_file(&rest, depth + 1);
            }
            for glob in &here.globs {
                let Some(mut absolute) = self.absolute(&module, glob) else { continue };
                absolute.extend_from_slice(&path[i..]);
                if let Some(file) = self.defining_file(&absolute, depth + 1) {
                    return Some(file);
                }
            }
            // An associated item or a variant of something defined in this module.
            return None;
        }
        self.modules.get(&module).map(|m| m.file.as_str())
    }

    /// `path` as written in `module`, made absolute; `None` for another crate's path.
    fn absolute(&self, module: &[String], path: &[String]) -> Option<Vec<String>> {
        self.absolute_within(module, path, 0)
    }

    fn absolute_within(&self, module: &[String], path: &[String], depth: usize) -> Option<Vec<String>> {
        if depth > 16 {
            return None;
        }
        let (first, rest) = path.split_first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => {
                let mut parent = module.to_vec();
                parent.pop();
                let mut rest = rest;
                while rest.first().map(String::as_str) == Some("super") {
                    parent.pop();
                    rest = &rest[1..];
                }
                let mut absolute = parent;
                absolute.extend_from_slice(rest);
                return Some(absolute);
            }
            "gpu_shopper" => Vec::new(),
            _ => {
                let here = self.modules.get(module)?;
                if here.children.contains_key(first) || here.items.contains(first) {
                    let mut absolute = module.to_vec();
                    absolute.extend_from_slice(path);
                    return Some(absolute);
                }
                let target = here.imports.get(first)?;
                if target.first() == Some(first) {
                    return None; // `use tokio;` or `use serde::Serialize`-like: another crate
                }
                let mut absolute = self.absolute_within(module, target, depth + 1)?;
                absolute.extend_from_slice(rest);
                return Some(absolute);
            }
        };
        base.extend_from_slice(rest);
        Some(base)
    }

    /// file -> the files it names something from.
    fn arrows(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut arrows: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (module, file) in &self.modules {
            let entry = arrows.entry(file.file.as_str()).or_default();
            for named in &file.named {
                let Some(absolute) = self.absolute(module, named) else { continue };
                if let Some(target) = self.defining_file(&absolute, 0)
                    && target != file.file
                {
                    entry.insert(target);
                }
            }
        }
        arrows
    }
}

/// Every circle of arrows (a strongly connected set of more than one file), by Tarjan's algorithm.
fn circles<'a>(arrows: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(node: &'a str, arrows: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(node, i);
        s.low.insert(node, i);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &next in arrows.get(node).into_iter().flatten() {
            if !s.index.contains_key(next) {
                visit(next, arrows, s);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top);
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &node in arrows.keys() {
        if !state.index.contains_key(node) {
            visit(node, arrows, &mut state);
        }
    }
    state.found
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One shortest way around a circle: from its first file back to itself.
fn a_way_around<'a>(circle: &[&'a str], arrows: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<&'a str> {
    let members: BTreeSet<&str> = circle.iter().copied().collect();
    let start = circle[0];
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for &next in arrows[at].iter().filter(|to| members.contains(*to)) {
            if next == start {
                let mut way = vec![start];
                let mut back = at;
                while back != start {
                    way.push(back);
                    back = came_from[back];
                }
                way[1..].reverse();
                way.push(start);
                return way;
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    circle.to_vec()
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    // GPU_SHOPPER_ARCH_ROOT reads another checkout (the tree before a change, say).
    let root = std::env::var_os("GPU_SHOPPER_ARCH_ROOT").map(PathBuf::from).unwrap_or_else(crate_root);
    let krate = Crate::read(&root);
    let arrows = krate.arrows();
    let found = circles(&arrows);
    let described: Vec<String> = found
        .iter()
        .map(|circle| format!("{} files, e.g. {}", circle.len(), a_way_around(circle, &arrows).join(" -> ")))
        .collect();
    assert!(found.is_empty(), "{} circle(s) of imports:\n{}", found.len(), described.join("\n"));
}

#[test]
fn a_stage_never_names_a_sibling_stage() {
    let krate = Crate::read(&crate_root());
    let arrows = krate.arrows();
    let stages = "src/controller/session/stages/";
    let stage_files: Vec<&str> =
        arrows.keys().copied().filter(|f| f.starts_with(stages) && !f.ends_with("mod.rs")).collect();
    assert!(stage_files.len() >= 5, "the stages are files of their own under {stages}: {stage_files:?}");
    for file in &stage_files {
        let siblings: Vec<&&str> = arrows[file].iter().filter(|to| stage_files.contains(to)).collect();
        assert!(siblings.is_empty(), "{file} names its sibling stage(s) {siblings:?}");
        let parent: Vec<&&str> =
            arrows[file].iter().filter(|to| to.starts_with(stages) && to.ends_with("mod.rs")).collect();
        assert!(parent.is_empty(), "{file} names the parent that runs it: {parent:?}");
    }
}

/// The analysis itself finds a circle when there is one, so a green run above means something.
#[test]
fn a_planted_circle_is_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod inner;\npub use inner::Thing;\n").unwrap();
    std::fs::write(src.join("a/inner.rs"), "pub struct Thing;\npub fn f() -> crate::b::Other { crate::b::Other }\n")
        .unwrap();
    std::fs::write(src.join("b.rs"), "use crate::a::Thing;\npub struct Other;\npub fn g(_: Thing) {}\n").unwrap();
    let krate = Crate::read(dir.path());
    let found = circles(&krate.arrows());
    assert_eq!(found, vec![vec!["src/a/inner.rs", "src/b.rs"]], "the re-export is followed to the defining file");
}
