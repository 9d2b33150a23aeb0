//! Backend-neutral statements: SQL text with `$N` placeholders (understood by both sqlx
//! SQLite and PostgreSQL) plus owned argument values, executed inside one transaction.
//!
//! On SQLite the multi-row statements run with anonymous `?` placeholders instead: SQLite
//! resolves a named or numbered parameter (`$N`, `?N`) by a linear scan of the statement's
//! parameter list, and sqlx asks for every parameter's name on every execution, which made a
//! 3,000-parameter insert quadratic (milliseconds per statement). Anonymous `?` have no name.
//!
//! Multi-row inserts are split into chunks of fixed sizes (256, 32, 4, 1 rows) so that only a
//! handful of distinct SQL strings exist per table: each stays in sqlx's per-connection
//! prepared-statement cache instead of being re-parsed for every batch size.

use crate::store::{Backend, Store};

/// One bound argument.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    I64(i64),
    OptI64(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
    F64(f64),
    OptF64(Option<f64>),
}

#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    /// With `$1, $2, ...` in order, each used once (PostgreSQL).
    pub sql: String,
    /// The same with anonymous `?` (SQLite).
    pub sql_anon: String,
    pub args: Vec<Value>,
}

/// Chunk sizes for multi-row inserts, largest first. The largest times the widest row (12
/// columns) stays far below SQLite's 32766 and PostgreSQL's 65535 bind limits.
const CHUNKS: [usize; 4] = [256, 32, 4, 1];

/// `INSERT INTO {head} VALUES (...), (...) {tail}` statements covering `rows`, each row being
/// `width` values.
pub(crate) fn multi_insert(head: &str, tail: &str, width: usize, rows: Vec<Value>) -> Vec<Stmt> {
    debug_assert_eq!(rows.len() % width.max(1), 0);
    let mut stmts = Vec::new();
    let mut values = rows.into_iter();
    let mut remaining = values.len() / width.max(1);
    for chunk in CHUNKS {
        while remaining >= chunk {
            let args: Vec<Value> = values.by_ref().take(chunk * width).collect();
            stmts.push(Stmt {
                sql: insert_sql(head, tail, width, chunk, true),
                sql_anon: insert_sql(head, tail, width, chunk, false),
                args,
            });
            remaining -= chunk;
        }
    }
    stmts
}

fn insert_sql(head: &str, tail: &str, width: usize, rows: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * width * 6 + 16);
    sql.push_str("INSERT INTO ");
    sql.push_str(head);
    sql.push_str(" VALUES ");
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&n.to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for a in $args {
            q = match a {
                $crate::sql::Value::I64(v) => q.bind(*v),
                $crate::sql::Value::OptI64(v) => q.bind(*v),
                $crate::sql::Value::Text(v) => q.bind(v.as_str()),
                $crate::sql::Value::OptText(v) => q.bind(v.as_deref()),
                $crate::sql::Value::Bool(v) => q.bind(*v),
                $crate::sql::Value::F64(v) => q.bind(*v),
                $crate::sql::Value::OptF64(v) => q.bind(*v),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

/// The lease check a fenced transaction runs first: the write commits only while the store's
/// lease is still at `epoch` (see [`crate::lease`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fence {
    pub epoch: u64,
    pub now_us: i64,
}

/// Why a (fenced) transaction did not commit.
#[derive(Debug)]
pub(crate) enum TxError {
    Sql(sqlx::Error),
    /// The lease is no longer at the fence's epoch: nothing was written.
    Fenced {
        epoch: u64,
    },
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Sql(e) => write!(f, "{e}"),
            TxError::Fenced { epoch } => write!(
                f,
                "store lease lost: epoch {epoch} no longer holds the store (another daemon took it)"
            ),
        }
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Sql(e)
    }
}

const FENCE_SQLITE: &str = "UPDATE store_lease SET heartbeat_us = ? WHERE id = 1 AND epoch = ?";
const FENCE_POSTGRES: &str = "UPDATE store_lease SET heartbeat_us = $1 WHERE id = 1 AND epoch = $2";

impl Store {
    /// Runs `stmts` in one transaction on the writer: all of them commit, or none.
    pub(crate) async fn execute_in_tx(&self, stmts: &[Stmt]) -> Result<(), sqlx::Error> {
        match self.execute_in_tx_fenced(None, stmts).await {
            Ok(()) => Ok(()),
            Err(TxError::Sql(e)) => Err(e),
            Err(TxError::Fenced { .. }) => Err(sqlx::Error::Protocol("fenced".into())),
        }
    }

    /// Like [`Store::execute_in_tx`], but when `fence` is given the transaction first checks
    /// (and heartbeats) the store lease row and rolls back unless it still holds its epoch.
    pub(crate) async fn execute_in_tx_fenced(
        &self,
        fence: Option<Fence>,
        stmts: &[Stmt],
    ) -> Result<(), TxError> {
        let epoch = fence.map(|f| f.epoch);
        let fence_args = fence.map(|f| (f.now_us, i64::try_from(f.epoch).unwrap_or(i64::MAX)));
        match self.backend() {
            Backend::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await?;
                if let Some((now_us, e)) = fence_args {
                    let done = sqlx::query(FENCE_SQLITE)
                        .bind(now_us)
                        .bind(e)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() != 1 {
                        tx.rollback().await?;
                        return Err(TxError::Fenced {
                            epoch: epoch.unwrap_or_default(),
                        });
                    }
                }
                for s in stmts {
                    bind_all!(sqlx::query(&s.sql_anon), &s.args)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(tx.commit().await?)
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if let Some((now_us, e)) = fence_args {
                    let done = sqlx::query(FENCE_POSTGRES)
                        .bind(now_us)
                        .bind(e)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() != 1 {
                        tx.rollback().await?;
                        return Err(TxError::Fenced {
                            epoch: epoch.unwrap_or_default(),
                        });
                    }
                }
                for s in stmts {
                    bind_all!(sqlx::query(&s.sql), &s.args)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(tx.commit().await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_with_few_distinct_statements() {
        for n in [0usize, 1, 3, 4, 37, 256, 300, 1000] {
            let rows: Vec<Value> = (0..n * 2).map(|i| Value::I64(i as i64)).collect();
            let stmts = multi_insert("t (a, b)", "", 2, rows);
            let covered: usize = stmts.iter().map(|s| s.args.len()).sum();
            assert_eq!(covered, n * 2);
            for s in &stmts {
                assert_eq!(s.sql.matches('$').count(), s.args.len());
                assert_eq!(s.sql_anon.matches('?').count(), s.args.len());
            }
        }
        let stmts = multi_insert("t (a)", "ON CONFLICT DO NOTHING", 1, vec![Value::I64(1); 5]);
        assert_eq!(stmts.len(), 2);
        assert_eq!(
            stmts[1].sql,
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
    }
}
