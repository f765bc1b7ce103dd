//! The ClearML endpoints, one module per ClearML service. Each handler takes
//! a decoded [`Call`](super::Call) and returns the envelope's `data`.

pub(crate) mod auth;
pub(crate) mod events;
pub(crate) mod models;
pub(crate) mod projects;
pub(crate) mod queues;
pub(crate) mod server;
pub(crate) mod tasks;
pub(crate) mod users;
pub(crate) mod workers;

use tasklab_error::{Error, ErrorCode};
use tasklab_proto::common::v1::{PageRequest, PageResponse};

/// Largest list returned when a ClearML client asks for no paging.
pub(crate) const MAX_UNPAGED: usize = 10_000;

/// Largest page size of the domain services.
const SERVICE_PAGE: u32 = 1000;

/// ClearML paging (`page`, `page_size`, zero-based) over a token-paged list.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Paging {
    pub(crate) page: Option<i64>,
    pub(crate) page_size: Option<i64>,
}

impl Paging {
    fn validate(&self) -> Result<(), Error> {
        for (name, v) in [("page", self.page), ("page_size", self.page_size)] {
            if v.is_some_and(|v| v < 0) {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("{name} must not be negative"),
                )
                .with_field("field", name));
            }
        }
        Ok(())
    }
}

/// Fetches the ClearML page from a token-paged list: `fetch` gets a page
/// request and returns a page of items and the next token.
pub(crate) async fn collect_pages<T, F, Fut>(paging: Paging, mut fetch: F) -> Result<Vec<T>, Error>
where
    F: FnMut(Option<PageRequest>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<PageResponse>), Error>>,
{
    paging.validate()?;
    let (skip, take) = match paging.page_size.filter(|s| *s > 0) {
        Some(size) => {
            let size = usize::try_from(size)
                .unwrap_or(MAX_UNPAGED)
                .min(MAX_UNPAGED);
            let page = usize::try_from(paging.page.unwrap_or(0)).unwrap_or(0);
            (page.saturating_mul(size), size)
        }
        None => (0, MAX_UNPAGED),
    };
    // Pages aligned on the requested size when it fits, so skipping costs
    // one call per skipped page and no item is fetched twice.
    let service_size = u32::try_from(take).map_or(SERVICE_PAGE, |t| t.clamp(1, SERVICE_PAGE));
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut token = String::new();
    loop {
        let (items, page) = fetch(Some(PageRequest {
            page_size: service_size,
            page_token: token.clone(),
            include_total: false,
        }))
        .await?;
        for item in items {
            if seen >= skip && out.len() < take {
                out.push(item);
            }
            seen += 1;
        }
        if out.len() >= take {
            break;
        }
        match page.map(|p| p.next_page_token) {
            Some(next) if !next.is_empty() => token = next,
            _ => break,
        }
    }
    Ok(out)
}

/// `Error` for a required id that names nothing.
pub(crate) fn missing(field: &str) -> Error {
    Error::new(
        ErrorCode::MissingField,
        format!("missing required field: {field}"),
    )
    .with_field("field", field)
}
