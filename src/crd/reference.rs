//! The field reference in docs/reference.md, generated from the CRD schemas so
//! that it cannot drift (a test compares).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};

fn type_of(schema: &JSONSchemaProps) -> String {
    match schema.type_.as_deref() {
        Some("array") => format!("[]{}", schema.items.as_ref().and_then(|i| match i {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => Some(type_of(s)),
            _ => None,
        }).unwrap_or_else(|| "?".into())),
        Some(t) => t.to_string(),
        None => "object".into(),
    }
}

fn rules(schema: &JSONSchemaProps) -> String {
    let mut rules = Vec::new();
    if let Some(values) = &schema.enum_ {
        let names: Vec<String> =
            values.iter().map(|v| v.0.as_str().map(str::to_string).unwrap_or_else(|| v.0.to_string())).collect();
        rules.push(format!("one of {}", names.join(", ")));
    }
    if let Some(min) = schema.minimum {
        rules.push(format!(">= {min}"));
    }
    if let Some(max) = schema.maximum {
        rules.push(format!("<= {max}"));
    }
    if let Some(max) = schema.max_length {
        rules.push(format!("at most {max} characters"));
    }
    if let Some(pattern) = &schema.pattern {
        rules.push(format!("matches `{pattern}`"));
    }
    for rule in schema.x_kubernetes_validations.iter().flatten() {
        rules.push(rule.message.clone().unwrap_or_else(|| format!("`{}`", rule.rule)));
    }
    rules.join("; ").replace('|', "\\|")
}

fn walk(out: &mut String, path: &str, schema: &JSONSchemaProps, required: bool) {
    let description = schema.description.clone().unwrap_or_default().replace('\n', " ").replace('|', "\\|");
    out.push_str(&format!(
        "| `{path}` | {} | {} | {description} | {} |\n",
        type_of(schema),
        if required { "yes" } else { "" },
        rules(schema)
    ));
    let child = match schema.type_.as_deref() {
        Some("array") => match &schema.items {
            Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s),
            ) => {
                walk_properties(out, &format!("{path}[]"), s);
                return;
            }
            _ => return,
        },
        _ => schema,
    };
    walk_properties(out, path, child);
}

fn walk_properties(out: &mut String, path: &str, schema: &JSONSchemaProps) {
    let required = schema.required.clone().unwrap_or_default();
    for (name, property) in schema.properties.iter().flatten() {
        if path.ends_with("conditions[]") {
            continue; // metav1.Condition, documented upstream
        }
        walk(out, &format!("{path}.{name}"), property, required.contains(name));
    }
}

fn section(out: &mut String, crd: &CustomResourceDefinition) {
    let version = &crd.spec.versions[0];
    let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("CRDs have schemas");
    let names = &crd.spec.names;
    out.push_str(&format!(
        "## {} (`{}/{}`, short name `{}`)\n\n{}\n\n",
        names.kind,
        crd.spec.group,
        version.name,
        names.short_names.clone().unwrap_or_default().join(", "),
        schema.description.clone().unwrap_or_default()
    ));
    out.push_str("| field | type | required | description | validation |\n| --- | --- | --- | --- | --- |\n");
    for part in ["spec", "status"] {
        if let Some(props) = schema.properties.as_ref().and_then(|p| p.get(part)) {
            walk(out, part, props, part == "spec");
        }
    }
    out.push('\n');
}

/// The whole reference as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# GpuSession and GpuOfferFilter reference\n\nGenerated from the CRD schemas by `gpu-shopper reference` (a test keeps it current). `kubectl explain gs.spec` shows the same text.\n\n",
    );
    let crds = super::crds();
    for kind in ["GpuSession", "GpuOfferFilter"] {
        if let Some(crd) = crds.iter().find(|c| c.spec.names.kind == kind) {
            section(&mut out, crd);
        }
    }
    out
}
