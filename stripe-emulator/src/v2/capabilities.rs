//! The capabilities of an Account v2's configurations. In a request each one says whether it is
//! `requested` (`configuration.merchant.capabilities.card_payments.requested`,
//! `configuration.recipient.capabilities.stripe_balance.stripe_transfers.requested`); the
//! Account shows each requested one as `{status, status_details: [{code, resolution}]}`, with
//! `status` one of `active`, `pending`, `rejected`, `restricted`, `unsupported` (the SDK's
//! `Account.Configuration.*.Capabilities`). Capabilities nest (`stripe_balance.stripe_transfers`);
//! the thin events name them dotted (`updated_capability: "stripe_balance.stripe_transfers"`).

use serde_json::{Map, Value, json};

/// A capability as the Account shows it.
pub fn status(status: &str, details: &[(&str, &str)]) -> Value {
    let details: Vec<Value> =
        details.iter().map(|(code, resolution)| json!({"code": code, "resolution": resolution})).collect();
    json!({"status": status, "status_details": details})
}

/// Whether `node` is one capability (it has a `status`), not a group of them.
fn is_capability(node: &Value) -> bool {
    node.get("status").is_some()
}

/// The capabilities under `capabilities`, by dotted name, in name order.
pub fn shown(capabilities: &Value) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    walk(capabilities, "", &mut found);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn walk(node: &Value, prefix: &str, found: &mut Vec<(String, Value)>) {
    let Some(fields) = node.as_object() else { return };
    for (name, child) in fields {
        let dotted = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        if is_capability(child) {
            found.push((dotted, child.clone()));
        } else {
            walk(child, &dotted, found);
        }
    }
}

/// What a `capabilities` parameter asks: each capability's path and whether it is requested
/// (`None`: sent without `requested`, which only an update allows: nothing changes).
pub fn requested(param: &Value) -> Vec<(Vec<String>, Option<bool>)> {
    let mut asked = Vec::new();
    ask(param, &mut Vec::new(), &mut asked);
    asked
}

fn ask(node: &Value, path: &mut Vec<String>, asked: &mut Vec<(Vec<String>, Option<bool>)>) {
    let Some(fields) = node.as_object() else { return };
    // A capability's own hash has `requested` (or nothing at all); a group has hashes only.
    let leaf = fields.is_empty() || fields.contains_key("requested") || !fields.values().all(Value::is_object);
    if leaf && !path.is_empty() {
        asked.push((path.clone(), fields.get("requested").and_then(Value::as_bool)));
        return;
    }
    for (name, child) in fields {
        path.push(name.clone());
        ask(child, path, asked);
        path.pop();
    }
}

/// Sets the capability at `path` under `capabilities` (an object), creating groups.
pub fn set(capabilities: &mut Value, path: &[String], value: Value) {
    let Some((last, groups)) = path.split_last() else { return };
    let mut node = capabilities;
    for group in groups {
        node = node
            .as_object_mut()
            .expect("capability groups are objects")
            .entry(group.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    node.as_object_mut().expect("capability groups are objects").insert(last.clone(), value);
}

/// Removes the capability at `path`, and the groups it leaves empty.
pub fn remove(capabilities: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(fields) = capabilities.as_object_mut() else { return };
    if rest.is_empty() {
        fields.remove(first);
        return;
    }
    if let Some(group) = fields.get_mut(first) {
        remove(group, rest);
        if group.as_object().is_some_and(Map::is_empty) {
            fields.remove(first);
        }
    }
}

/// Whether the capability at `path` is there.
pub fn has(capabilities: &Value, path: &[String]) -> bool {
    let mut node = capabilities;
    for name in path {
        match node.get(name) {
            Some(next) => node = next,
            None => return false,
        }
    }
    is_capability(node)
}

/// Gives every capability under `capabilities` this shown value.
pub fn set_every(capabilities: &mut Value, value: &Value) {
    let Some(fields) = capabilities.as_object_mut() else { return };
    for child in fields.values_mut() {
        if is_capability(child) {
            *child = value.clone();
        } else {
            set_every(child, value);
        }
    }
}

/// A configuration with its capabilities' statuses left out (which capabilities it has kept),
/// to tell a change of the configuration from a change of a capability's status.
pub fn without_statuses(configuration: &Value) -> Value {
    let mut copy = configuration.clone();
    if let Some(capabilities) = copy.get_mut("capabilities") {
        set_every(capabilities, &json!({"status": null}));
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_capabilities_are_requested_set_shown_and_removed() {
        let param = json!({"stripe_balance": {"stripe_transfers": {"requested": true}}, "cards": {"requested": false}});
        let asked = requested(&param);
        assert_eq!(
            asked,
            vec![
                (vec!["cards".to_string()], Some(false)),
                (vec!["stripe_balance".into(), "stripe_transfers".into()], Some(true))
            ]
        );
        let mut caps = json!({});
        set(&mut caps, &asked[1].0, status("restricted", &[("requirements_past_due", "provide_info")]));
        assert!(has(&caps, &asked[1].0) && !has(&caps, &asked[0].0));
        let names: Vec<String> = shown(&caps).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["stripe_balance.stripe_transfers"]);
        set_every(&mut caps, &status("active", &[]));
        assert_eq!(caps["stripe_balance"]["stripe_transfers"], json!({"status": "active", "status_details": []}));
        remove(&mut caps, &asked[1].0);
        assert_eq!(caps, json!({}));
        assert_eq!(requested(&json!({"card_payments": {}})), vec![(vec!["card_payments".to_string()], None)]);
    }
}
