//! The contracts are the public API: every service, RPC, message, field,
//! enum and enum value in `proto/tasklab` must carry a leading comment.

use std::collections::HashSet;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

// Field numbers of descriptor.proto used in source-code-info paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn check_enum(
    e: &EnumDescriptorProto,
    path: Vec<i32>,
    name: &str,
    documented: &HashSet<Vec<i32>>,
    missing: &mut Vec<String>,
) {
    let name = format!("{name}.{}", e.name());
    if !documented.contains(&path) {
        missing.push(format!("enum {name}"));
    }
    for (i, value) in e.value.iter().enumerate() {
        let mut p = path.clone();
        p.extend([ENUM_VALUE, i as i32]);
        if !documented.contains(&p) {
            missing.push(format!("enum value {name}.{}", value.name()));
        }
    }
}

fn check_message(
    m: &DescriptorProto,
    path: Vec<i32>,
    name: &str,
    documented: &HashSet<Vec<i32>>,
    missing: &mut Vec<String>,
) {
    let name = format!("{name}.{}", m.name());
    // Map entries are synthesized by protoc; they cannot carry comments.
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    if !documented.contains(&path) {
        missing.push(format!("message {name}"));
    }
    for (i, field) in m.field.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_FIELD, i as i32]);
        if !documented.contains(&p) {
            missing.push(format!("field {name}.{}", field.name()));
        }
    }
    for (i, nested) in m.nested_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_NESTED, i as i32]);
        check_message(nested, p, &name, documented, missing);
    }
    for (i, e) in m.enum_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_ENUM, i as i32]);
        check_enum(e, p, &name, documented, missing);
    }
}

#[test]
fn every_element_of_every_tasklab_proto_is_documented() {
    let set = FileDescriptorSet::decode(tasklab_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut missing = Vec::new();
    let mut files = 0;
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("tasklab."))
    {
        files += 1;
        let info = file
            .source_code_info
            .as_ref()
            .expect("descriptor keeps source info");
        let documented: HashSet<Vec<i32>> = info
            .location
            .iter()
            .filter(|l| {
                l.leading_comments
                    .as_deref()
                    .is_some_and(|c| !c.trim().is_empty())
            })
            .map(|l| l.path.clone())
            .collect();
        let pkg = file.package();
        for (i, m) in file.message_type.iter().enumerate() {
            check_message(
                m,
                vec![FILE_MESSAGE, i as i32],
                pkg,
                &documented,
                &mut missing,
            );
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            check_enum(e, vec![FILE_ENUM, i as i32], pkg, &documented, &mut missing);
        }
        for (i, s) in file.service.iter().enumerate() {
            let name = format!("{pkg}.{}", s.name());
            if !documented.contains(&vec![FILE_SERVICE, i as i32]) {
                missing.push(format!("service {name}"));
            }
            for (j, method) in s.method.iter().enumerate() {
                if !documented.contains(&vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32]) {
                    missing.push(format!("rpc {name}.{}", method.name()));
                }
            }
        }
    }
    assert!(
        files >= 6,
        "expected the common package and five domain packages, found {files} files"
    );
    assert!(
        missing.is_empty(),
        "undocumented proto elements:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_domain_package_defines_a_service() {
    let set = FileDescriptorSet::decode(tasklab_proto::FILE_DESCRIPTOR_SET).unwrap();
    for domain in ["tasks", "projects", "queues", "artifacts", "metrics"] {
        let package = format!("tasklab.{domain}.v1");
        let services: usize = set
            .file
            .iter()
            .filter(|f| f.package() == package)
            .map(|f| f.service.len())
            .sum();
        assert!(services > 0, "{package} defines no service");
    }
}
