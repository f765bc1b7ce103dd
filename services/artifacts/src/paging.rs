//! Ordering and page tokens shared by every list of this service.
//!
//! A list sorts its matching items by the requested keys with the item's
//! identity last (so ties are broken and paging is stable), then returns the
//! items after the token's key. A token is URL-safe base64 of JSON holding
//! the last returned key and a fingerprint of the request, so a token is
//! only accepted by the list that issued it.

use std::cmp::Ordering;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tasklab_error::{Error, ErrorCode, Result};

/// Page size when the request leaves it at 0.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page; larger requests are clamped.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

/// One value of a sort key. Values of one position always have the same
/// kind, except `Null` (an unset optional field), which sorts first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum SortValue {
    Null,
    Int(i64),
    Text(String),
}

impl SortValue {
    fn rank(&self) -> u8 {
        match self {
            SortValue::Null => 0,
            SortValue::Int(_) => 1,
            SortValue::Text(_) => 2,
        }
    }
}

impl Ord for SortValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortValue::Int(a), SortValue::Int(b)) => a.cmp(b),
            (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for SortValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two keys; `descending[i]` reverses position `i`.
pub(crate) fn compare(a: &[SortValue], b: &[SortValue], descending: &[bool]) -> Ordering {
    for ((x, y), desc) in a.iter().zip(b).zip(descending) {
        let ord = x.cmp(y);
        let ord = if *desc { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// What a page request asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct PageRequest {
    /// 0 for the default.
    pub(crate) page_size: u32,
    pub(crate) page_token: String,
    pub(crate) include_total: bool,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    /// Empty on the last page.
    pub(crate) next_page_token: String,
    pub(crate) total_size: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    #[serde(rename = "f")]
    fingerprint: String,
    #[serde(rename = "k")]
    key: Vec<SortValue>,
}

/// Sorts `items` by `key` (whose last position must identify the item) and
/// returns the page `page` asks for. `request` describes everything in the
/// request but the paging fields; it becomes the token's fingerprint.
pub(crate) fn paginate<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> Vec<SortValue>,
    descending: &[bool],
    request: &str,
    page: &PageRequest,
) -> Result<Page<T>> {
    let fingerprint = fingerprint(request);
    let after = match page.page_token.as_str() {
        "" => None,
        token => Some(decode(token, &fingerprint, descending.len())?),
    };
    let size = match page.page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let mut keyed: Vec<(Vec<SortValue>, T)> = items.drain(..).map(|i| (key(&i), i)).collect();
    keyed.sort_by(|a, b| compare(&a.0, &b.0, descending));
    let total_size = page.include_total.then_some(keyed.len() as u64);
    let start = match &after {
        None => 0,
        Some(after) => keyed.partition_point(|(k, _)| compare(k, after, descending).is_le()),
    };
    let end = (start + size).min(keyed.len());
    let next_page_token = if end < keyed.len() && end > 0 {
        let cursor = Cursor {
            fingerprint,
            key: keyed[end - 1].0.clone(),
        };
        let json = serde_json::to_vec(&cursor).map_err(Error::internal)?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    } else {
        String::new()
    };
    let items = keyed.drain(start..end).map(|(_, item)| item).collect();
    Ok(Page {
        items,
        next_page_token,
        total_size,
    })
}

fn decode(token: &str, fingerprint: &str, key_len: usize) -> Result<Vec<SortValue>> {
    let invalid = |why: &str| {
        Error::new(
            ErrorCode::InvalidPageToken,
            format!("invalid page token: {why}"),
        )
        .with_field("field", "page.page_token")
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid("not issued by this list"))?;
    let cursor: Cursor =
        serde_json::from_slice(&bytes).map_err(|_| invalid("not issued by this list"))?;
    if cursor.fingerprint != fingerprint {
        return Err(invalid(
            "the request's filters or ordering changed since the first page",
        ));
    }
    if cursor.key.len() != key_len {
        return Err(invalid("not issued by this list"));
    }
    Ok(cursor.key)
}

/// FNV-1a of the request description: stable across processes and
/// releases, so any replica accepts any replica's token.
fn fingerprint(request: &str) -> String {
    let hash = request
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// An ordering key as requested: field name and direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderBy {
    pub(crate) field: String,
    pub(crate) descending: bool,
}

/// Resolves requested ordering keys against the fields a list supports.
pub(crate) fn parse_order<F: Copy>(
    order_by: &[OrderBy],
    default: &[(F, bool)],
    parse: impl Fn(&str) -> Option<F>,
    supported: &str,
) -> Result<Vec<(F, bool)>> {
    if order_by.is_empty() {
        return Ok(default.to_vec());
    }
    order_by
        .iter()
        .map(|o| {
            parse(&o.field).map(|f| (f, o.descending)).ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidOrderBy,
                    format!("cannot order by {:?}; supported: {supported}", o.field),
                )
                .with_field("field", "order_by")
                .with_field("value", &o.field)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: Vec<i64>, size: u32, token: &str, request: &str) -> Result<Page<i64>> {
        paginate(
            items,
            |i| vec![SortValue::Int(i % 3), SortValue::Int(*i)],
            &[true, false],
            request,
            &PageRequest {
                page_size: size,
                page_token: token.to_owned(),
                include_total: true,
            },
        )
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let items: Vec<i64> = (0..10).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let p = page(items.clone(), 3, &token, "r").unwrap();
            assert_eq!(p.total_size, Some(10));
            seen.extend(p.items);
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(seen, vec![2, 5, 8, 1, 4, 7, 0, 3, 6, 9]);
    }

    #[test]
    fn tokens_of_another_request_are_refused() {
        let p = page((0..10).collect(), 3, "", "r").unwrap();
        let err = page((0..10).collect(), 3, &p.next_page_token, "other").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidPageToken);
        let err = page((0..10).collect(), 3, "garbage!", "r").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidPageToken);
    }
}
