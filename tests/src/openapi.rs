//! A JSON Schema validator for the subset of keywords the control plane's OpenAPI 3.1
//! document uses, and lookups of operations in it. Used by `control-plane/tests/openapi.rs`
//! (included by path: the control plane does not depend on this crate) and by
//! `tests/tests/fleet_visibility.rs`.
//!
//! A keyword it does not know is an error, never ignored: a document that grows a keyword
//! this validator cannot check fails the tests instead of passing them unchecked.

use serde_json::Value;

/// Keywords that say nothing a value can break.
const ANNOTATIONS: [&str; 7] = [
    "description",
    "title",
    "default",
    "examples",
    "example",
    "format",
    "deprecated",
];

/// Checks `value` against `schema`, resolving `$ref`s in `document`; every violation, with
/// its JSON path.
pub fn validate(document: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(document, schema, value, "$", &mut errors);
    errors
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => false,
    }
}

fn check(document: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        if schema != &Value::Bool(true) {
            errors.push(format!("{path}: schema {schema} is not an object"));
        }
        return;
    };
    for (keyword, argument) in schema {
        match keyword.as_str() {
            "$ref" => {
                let target = argument
                    .as_str()
                    .and_then(|reference| reference.strip_prefix("#/"))
                    .map(|pointer| format!("/{pointer}"))
                    .and_then(|pointer| document.pointer(&pointer));
                match target {
                    Some(target) => check(document, target, value, path, errors),
                    None => errors.push(format!("{path}: unresolved $ref {argument}")),
                }
            }
            "type" => {
                let names: Vec<&str> = match argument {
                    Value::String(name) => vec![name.as_str()],
                    Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                if !names.iter().any(|name| type_matches(name, value)) {
                    errors.push(format!("{path}: {value} is not of type {argument}"));
                }
            }
            "properties" => {
                if let (Some(properties), Some(object)) = (argument.as_object(), value.as_object())
                {
                    for (name, property) in properties {
                        if let Some(item) = object.get(name) {
                            check(document, property, item, &format!("{path}.{name}"), errors);
                        }
                    }
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in argument.as_array().into_iter().flatten() {
                        if let Some(name) = name.as_str()
                            && !object.contains_key(name)
                        {
                            errors.push(format!("{path}: required {name} is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    let known = schema.get("properties").and_then(Value::as_object);
                    for (name, item) in object {
                        if known.is_some_and(|known| known.contains_key(name)) {
                            continue;
                        }
                        match argument {
                            Value::Bool(false) => {
                                errors.push(format!("{path}: {name} is not in the schema"));
                            }
                            Value::Bool(true) => {}
                            extra => {
                                check(document, extra, item, &format!("{path}.{name}"), errors)
                            }
                        }
                    }
                }
            }
            "propertyNames" => {
                if let Some(object) = value.as_object() {
                    for name in object.keys() {
                        check(
                            document,
                            argument,
                            &Value::String(name.clone()),
                            &format!("{path}.<{name}>"),
                            errors,
                        );
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (index, item) in items.iter().enumerate() {
                        check(
                            document,
                            argument,
                            item,
                            &format!("{path}[{index}]"),
                            errors,
                        );
                    }
                }
            }
            "oneOf" | "anyOf" => {
                let options = argument.as_array().cloned().unwrap_or_default();
                let matching = options
                    .iter()
                    .filter(|option| validate(document, option, value).is_empty())
                    .count();
                let ok = if keyword == "oneOf" {
                    matching == 1
                } else {
                    matching >= 1
                };
                if !ok {
                    errors.push(format!(
                        "{path}: {value} matches {matching} of the {} {keyword} options",
                        options.len()
                    ));
                }
            }
            "allOf" => {
                for option in argument.as_array().into_iter().flatten() {
                    check(document, option, value, path, errors);
                }
            }
            "enum" => {
                if !argument
                    .as_array()
                    .is_some_and(|options| options.contains(value))
                {
                    errors.push(format!("{path}: {value} is not one of {argument}"));
                }
            }
            "minimum" => {
                if let (Some(minimum), Some(number)) = (argument.as_f64(), value.as_f64())
                    && number < minimum
                {
                    errors.push(format!("{path}: {number} is below {minimum}"));
                }
            }
            "maximum" => {
                if let (Some(maximum), Some(number)) = (argument.as_f64(), value.as_f64())
                    && number > maximum
                {
                    errors.push(format!("{path}: {number} is above {maximum}"));
                }
            }
            other if ANNOTATIONS.contains(&other) => {}
            other => errors.push(format!("{path}: unsupported keyword {other}")),
        }
    }
}

/// The operation for `method` (lowercase) on a path template of the document.
pub fn operation<'a>(document: &'a Value, template: &str, method: &str) -> Option<&'a Value> {
    document.get("paths")?.get(template)?.get(method)
}

/// The path template of the document a concrete path (`/api/v2/apps/web`) belongs to, the
/// most specific one first (no `{...}` segment beats one).
pub fn template_of(document: &Value, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    let mut matches: Vec<(usize, String)> = document
        .get("paths")?
        .as_object()?
        .keys()
        .filter_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut variables = 0;
            for (part, segment) in parts.iter().zip(&segments) {
                if part.starts_with('{') && part.ends_with('}') {
                    variables += 1;
                } else if part != segment {
                    return None;
                }
            }
            Some((variables, template.clone()))
        })
        .collect();
    matches.sort();
    matches.into_iter().next().map(|(_, template)| template)
}

/// The JSON schema of the answer `status` of an operation.
pub fn response_schema(operation: &Value, status: u16) -> Option<&Value> {
    operation
        .get("responses")?
        .get(status.to_string())?
        .get("content")?
        .get("application/json")?
        .get("schema")
}

/// The JSON schema of an operation's request body.
pub fn request_schema(operation: &Value) -> Option<&Value> {
    operation
        .get("requestBody")?
        .get("content")?
        .get("application/json")?
        .get("schema")
}

/// Checks an answer against the document: the operation exists, documents `status`, and
/// the body fits its schema. Every problem, empty when it agrees.
pub fn check_answer(
    document: &Value,
    method: &str,
    path: &str,
    status: u16,
    body: &Value,
) -> Vec<String> {
    let Some(template) = template_of(document, path) else {
        return vec![format!("{method} {path}: no path of the document matches")];
    };
    let Some(operation) = operation(document, &template, method) else {
        return vec![format!("{method} {template}: not in the document")];
    };
    let Some(schema) = response_schema(operation, status) else {
        return vec![format!(
            "{method} {template}: status {status} is not documented"
        )];
    };
    validate(document, schema, body)
        .into_iter()
        .map(|error| format!("{method} {template} {status}: {error}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document() -> Value {
        json!({
            "paths": {"/apps/{app}": {"get": {}}, "/apps/list": {"get": {}}},
            "components": {"schemas": {
                "App": {"type": "object", "required": ["name"], "additionalProperties": false,
                        "properties": {"name": {"type": "string"}, "id": {"type": "integer", "minimum": 0},
                                       "tag": {"oneOf": [{"type": "null"}, {"type": "string"}]}}}
            }}
        })
    }

    #[test]
    fn validates_the_keywords_it_knows() {
        let document = document();
        let schema = json!({"$ref": "#/components/schemas/App"});
        assert!(
            validate(
                &document,
                &schema,
                &json!({"name": "web", "id": 3, "tag": null})
            )
            .is_empty()
        );
        for bad in [
            json!({"id": 3}),
            json!({"name": 1}),
            json!({"name": "web", "id": -1}),
            json!({"name": "web", "extra": true}),
            json!({"name": "web", "tag": 5}),
            json!([]),
        ] {
            assert!(
                !validate(&document, &schema, &bad).is_empty(),
                "{bad} passed"
            );
        }
        assert!(!validate(&document, &json!({"pattern": "x"}), &json!("x")).is_empty());
        assert!(!validate(&document, &json!({"$ref": "#/nowhere"}), &json!(1)).is_empty());
    }

    #[test]
    fn concrete_paths_find_their_template() {
        let document = document();
        assert_eq!(
            template_of(&document, "/apps/web").as_deref(),
            Some("/apps/{app}")
        );
        assert_eq!(
            template_of(&document, "/apps/list").as_deref(),
            Some("/apps/list")
        );
        assert_eq!(template_of(&document, "/apps/web/x"), None);
    }
}
