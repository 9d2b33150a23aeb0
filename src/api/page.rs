//! Pagination and filtering of list endpoints: `?limit=&offset=` and `Page<T>` answers.
//!
//! Invariants:
//! - `limit` is 1..=[`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]); anything else is a 400 naming
//!   `limit`, never a silent clamp, so a client learns the bound.
//! - `offset` is 0..=2^63-1 (the OpenAPI's int64); above it is a 400 naming `offset`.
//! - `total` counts the matching items before paging.

use super::error::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 500;

/// `?limit=&offset=`.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Items per page, 1..=500 (default 100).
    pub limit: Option<u32>,
    /// Items to skip (default 0).
    pub offset: Option<u64>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageReq {
    pub limit: u32,
    pub offset: u64,
}

impl PageParams {
    pub fn validate(self) -> Result<PageReq, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: format!("limit {limit} is out of range 1..={MAX_LIMIT}"),
                field: Some("limit".into()),
            });
        }
        let offset = self.offset.unwrap_or(0);
        if offset > i64::MAX as u64 {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: format!("offset {offset} is above {} (int64)", i64::MAX),
                field: Some("offset".into()),
            });
        }
        Ok(PageReq { limit, offset })
    }
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Matching items in all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

impl<T> Page<T> {
    /// Pages an in-memory list (already filtered and ordered).
    pub fn from_vec(all: Vec<T>, req: PageReq) -> Self {
        let total = all.len() as u64;
        let items = all
            .into_iter()
            .skip(usize::try_from(req.offset).unwrap_or(usize::MAX))
            .take(req.limit as usize)
            .collect();
        Self {
            items,
            total,
            limit: req.limit,
            offset: req.offset,
        }
    }

    /// A page the store already cut; `total` counted separately.
    pub fn new(items: Vec<T>, total: u64, req: PageReq) -> Self {
        Self {
            items,
            total,
            limit: req.limit,
            offset: req.offset,
        }
    }
}

/// Filtering helpers: parse an optional query value with a 400 naming the field.
pub fn parse_opt<T: std::str::FromStr>(
    field: &str,
    value: Option<&str>,
) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    value
        .map(|v| {
            v.parse::<T>().map_err(|e| ApiError::BadRequest {
                code: "bad_query",
                message: format!("{field}={v:?}: {e}"),
                field: Some(field.to_owned()),
            })
        })
        .transpose()
}

/// Whether an optional filter matches (no filter matches everything).
pub fn matches<T: PartialEq>(filter: Option<&T>, value: &T) -> bool {
    filter.is_none_or(|f| f == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_and_pages_cut() {
        assert_eq!(
            PageParams::default().validate().unwrap(),
            PageReq {
                limit: 100,
                offset: 0
            }
        );
        let bad = PageParams {
            limit: Some(501),
            offset: None,
        };
        assert_eq!(bad.validate().unwrap_err().field(), Some("limit"));
        let far = PageParams {
            limit: None,
            offset: Some(1 << 63),
        };
        assert_eq!(far.validate().unwrap_err().field(), Some("offset"));
        assert!(PageParams {
            limit: Some(0),
            offset: None
        }
        .validate()
        .is_err());
        let p = Page::from_vec(
            (0..10).collect(),
            PageReq {
                limit: 3,
                offset: 8,
            },
        );
        assert_eq!(p.items, vec![8, 9]);
        assert_eq!(p.total, 10);
        assert_eq!(
            parse_opt::<u32>("n", Some("x")).unwrap_err().field(),
            Some("n")
        );
        assert_eq!(parse_opt::<u32>("n", Some("4")).unwrap(), Some(4));
        assert!(matches(None, &3) && matches(Some(&3), &3) && !matches(Some(&2), &3));
    }
}
