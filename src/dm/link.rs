//! CoRE Link Format (RFC 6690) as LwM2M uses it: the object list sent in Register and
//! Update (never listing the Security object).

use super::{oid, DataModel};

/// The registration payload: `</1>;ver=1.1,</1/0>,</3/0>,...`.
pub fn registration_payload(dm: &DataModel) -> String {
    let mut links = Vec::new();
    for id in dm.object_ids() {
        if id == oid::SECURITY {
            continue;
        }
        let Some(obj) = dm.object(id) else { continue };
        let instances = obj.instances();
        let version = obj.version();
        if version != "1.0" {
            links.push(format!("</{id}>;ver={version}"));
        } else if instances.is_empty() {
            links.push(format!("</{id}>"));
        }
        links.extend(instances.iter().map(|iid| format!("</{id}/{iid}>")));
    }
    links.join(",")
}

/// One parsed link: target path and its attributes as raw `key=value` strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub target: String,
    pub attributes: Vec<String>,
}

/// Parses link format, refusing malformed input rather than guessing.
pub fn parse(s: &str) -> Option<Vec<Link>> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Some(out);
    }
    for item in split_outside_quotes(s, ',') {
        let mut parts = split_outside_quotes(item.trim(), ';').into_iter();
        let target = parts.next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        out.push(Link {
            target: target.to_string(),
            attributes: parts.map(|a| a.trim().to_string()).collect(),
        });
    }
    Some(out)
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::objects::{SecurityInstance, ServerInstance};

    #[test]
    fn registration_lists_objects_but_never_security() {
        let mut dm = DataModel::new();
        dm.security
            .insert(0, SecurityInstance::nosec("coap://127.0.0.1:5683", 1))
            .unwrap();
        dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
        let p = registration_payload(&dm);
        assert!(!p.contains("</0"), "{p}");
        assert!(p.contains("</1/0>"), "{p}");
        assert!(p.contains("</3/0>"), "{p}");
        let links = parse(&p).unwrap();
        assert!(links.iter().all(|l| !l.target.starts_with("/0")));
    }

    #[test]
    fn parse_handles_quotes_and_refuses_garbage() {
        let l = parse(r#"</>;rt="oma.lwm2m,x";ct=11543,</1/0>"#).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].attributes[0], r#"rt="oma.lwm2m,x""#);
        assert!(parse("</1/0").is_none());
        assert!(parse("1/0>").is_none());
    }
}
