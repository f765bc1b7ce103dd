//! Blob paths, and the URIs that point at them.
//!
//! A blob path is relative to the storage root: 1 to 1024 bytes of UTF-8,
//! `/`-separated segments of 1 to 255 bytes, none of them `.` or `..`, and no
//! backslash, NUL or other control character anywhere. Paths are never
//! normalised: a path that breaks a rule is refused, not repaired, so no
//! spelling can reach outside the root.
//!
//! A URI is *stored* (lives in tasklab storage) when it starts with the
//! public files URL followed by `/`, or with `tasklab-blob:///`; its blob path
//! is the rest, percent-decoded once, and must itself be a valid path. Every
//! other URI, including a files-host URI whose path is invalid, is
//! *external* and is never touched.

use tasklab_error::{Error, ErrorCode, Result};

/// Longest blob path, in bytes.
pub(crate) const MAX_PATH_BYTES: usize = 1024;
/// Longest path segment, in bytes.
pub(crate) const MAX_SEGMENT_BYTES: usize = 255;
/// The scheme of URIs that name a blob independently of the files host.
pub(crate) const BLOB_SCHEME: &str = "tasklab-blob:///";

/// Checks a blob path against the rules of the module docs.
pub(crate) fn check_path(path: &str) -> Result<()> {
    check(path, false)
}

/// Checks a listing or delete prefix: the path rules, except that the last
/// segment may be empty (a prefix ending with `/`).
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    check(prefix, true)
}

fn check(path: &str, prefix: bool) -> Result<()> {
    let invalid = |why: &str| {
        Error::new(ErrorCode::InvalidPath, format!("invalid blob path: {why}"))
            .with_field("path", path.escape_debug().to_string())
    };
    if path.is_empty() {
        return Err(invalid("the path is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid("the path is longer than 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(invalid("the path is absolute"));
    }
    if path.contains('\\') {
        return Err(invalid("the path contains a backslash"));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid("the path contains a control character"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && !(prefix && i == last) {
            return Err(invalid("the path has an empty segment"));
        }
        if *segment == "." || *segment == ".." {
            return Err(invalid("the path has a '.' or '..' segment"));
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(invalid("a segment is longer than 255 bytes"));
        }
    }
    Ok(())
}

/// Where a URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// No URI at all.
    None,
    /// A blob in tasklab storage, with its path.
    Stored(String),
    /// Anywhere else.
    External,
}

/// Classifies URIs against the public files URL.
#[derive(Debug, Clone)]
pub(crate) struct UriBase {
    /// The files URL without a trailing `/`.
    files_url: String,
}

impl UriBase {
    pub(crate) fn new(files_url: &str) -> Self {
        UriBase {
            files_url: files_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Where `uri` points.
    pub(crate) fn locate(&self, uri: &str) -> Location {
        if uri.is_empty() {
            return Location::None;
        }
        let rest = uri.strip_prefix(BLOB_SCHEME).or_else(|| {
            uri.strip_prefix(self.files_url.as_str())
                .and_then(|r| r.strip_prefix('/'))
        });
        let Some(rest) = rest else {
            return Location::External;
        };
        // A query or fragment is not part of the path.
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        match percent_decode(rest) {
            Some(path) if check_path(&path).is_ok() => Location::Stored(path),
            _ => Location::External,
        }
    }

    /// The blob path of `uri`, or `""` when it is not stored.
    pub(crate) fn blob_path(&self, uri: &str) -> String {
        match self.locate(uri) {
            Location::Stored(path) => path,
            _ => String::new(),
        }
    }

    /// The public URL of a valid blob path.
    pub(crate) fn uri(&self, path: &str) -> String {
        format!("{}/{}", self.files_url, percent_encode_path(path))
    }
}

/// Percent-encodes every byte of `path` but unreserved characters and `/`.
pub(crate) fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes once; `None` for a malformed escape or a result
/// that is not UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The MIME type of a path, guessed from its extension.
pub(crate) fn guess_content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "yaml" | "yml" => "application/yaml",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_paths_pass() {
        for p in [
            "a",
            "proj/exp.123/artifacts/x/x.json",
            "with space/ünïcode/%2e%2e",
            "a.b/..c/c..",
        ] {
            check_path(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn escapes_and_odd_paths_are_refused() {
        let long_segment = "x".repeat(256);
        let long_path = format!("{}/y", ["a"; 600].join("/"));
        for p in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            "a\nb",
            long_segment.as_str(),
            long_path.as_str(),
        ] {
            let err = check_path(p).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidPath, "{p:?}");
        }
        check_prefix("a/").unwrap();
        check_prefix("a/b").unwrap();
        assert!(check_prefix("a//").is_err());
        assert!(check_prefix("../").is_err());
    }

    #[test]
    fn uris_are_classified() {
        let base = UriBase::new("http://files:8081/");
        assert_eq!(base.locate(""), Location::None);
        assert_eq!(
            base.locate("http://files:8081/p/t.1/artifacts/a%20b/x.json"),
            Location::Stored("p/t.1/artifacts/a b/x.json".into())
        );
        assert_eq!(
            base.locate("tasklab-blob:///m/w.bin"),
            Location::Stored("m/w.bin".into())
        );
        for external in [
            "s3://bucket/x",
            "http://other:8081/p/x",
            "http://files:80810/p/x",
            "http://files:8081/%2e%2e/etc/passwd",
            "http://files:8081//etc/passwd",
            "http://files:8081/a/%ZZ",
            "file:///etc/passwd",
        ] {
            assert_eq!(base.locate(external), Location::External, "{external}");
        }
        let path = "p q/ü#1?.json";
        assert_eq!(base.locate(&base.uri(path)), Location::Stored(path.into()));
    }

    #[test]
    fn content_types_are_guessed() {
        assert_eq!(guess_content_type("a/b.JSON"), "application/json");
        assert_eq!(guess_content_type("a.b/c"), "application/octet-stream");
        assert_eq!(guess_content_type("m/model.pt"), "application/octet-stream");
    }
}
