//! The Manager's database: embedded SQLite (a file in the data dir) by default,
//! PostgreSQL when given a `postgres://` URL. One schema with versioned migrations; the
//! same SQL runs on both (`$n` parameters, `ON CONFLICT ... DO UPDATE`).
//!
//! Objects are stored as JSON documents keyed by (kind, id); events in their own table.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored document {kind}/{id} is not valid: {source}")]
    Document {
        kind: String,
        id: String,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, DbError>;

/// Schema migrations, applied in order once each.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS objects (kind VARCHAR(32) NOT NULL, id VARCHAR(64) NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id))",
    ),
    (
        2,
        "CREATE TABLE IF NOT EXISTS events (id BIGINT PRIMARY KEY, data TEXT NOT NULL)",
    ),
];

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    pub backend: &'static str,
}

impl Db {
    /// Opens (creating the SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            "postgresql"
        } else {
            "sqlite"
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == "sqlite" { 1 } else { 4 })
            .connect(url)
            .await?;
        if backend == "sqlite" {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA synchronous=FULL")
                .execute(&pool)
                .await?;
        }
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_version")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r: &AnyRow| r.try_get::<i64, _>(0).unwrap_or(0))
            .collect();
        for (v, sql) in MIGRATIONS {
            if applied.contains(v) {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            sqlx::query(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(*v)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version = v, "database migrated");
        }
        Ok(())
    }

    /// Inserts or replaces a document.
    pub async fn put<T: Serialize>(&self, kind: &str, id: &str, v: &T) -> Result<()> {
        let data = serde_json::to_string(v).map_err(|source| DbError::Document {
            kind: kind.into(),
            id: id.into(),
            source,
        })?;
        self.put_json(kind, id, data).await
    }

    /// Inserts or replaces a document already serialised.
    pub async fn put_json(&self, kind: &str, id: &str, data: String) -> Result<()> {
        sqlx::query(
            "INSERT INTO objects (kind, id, data) VALUES ($1, $2, $3) \
             ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data",
        )
        .bind(kind)
        .bind(id)
        .bind(data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete(&self, kind: &str, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM objects WHERE kind = $1 AND id = $2")
            .bind(kind)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// All documents of a kind.
    pub async fn all<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>> {
        let rows = sqlx::query("SELECT id, data FROM objects WHERE kind = $1")
            .bind(kind)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0)?;
            let data: String = r.try_get(1)?;
            out.push(
                serde_json::from_str(&data).map_err(|source| DbError::Document {
                    kind: kind.into(),
                    id,
                    source,
                })?,
            );
        }
        Ok(out)
    }

    pub async fn get<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Result<Option<T>> {
        let row = sqlx::query("SELECT data FROM objects WHERE kind = $1 AND id = $2")
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let data: String = r.try_get(0)?;
                Ok(Some(serde_json::from_str(&data).map_err(|source| {
                    DbError::Document {
                        kind: kind.into(),
                        id: id.into(),
                        source,
                    }
                })?))
            }
        }
    }

    pub async fn add_event<T: Serialize>(&self, id: i64, v: &T) -> Result<()> {
        let data = serde_json::to_string(v).map_err(|source| DbError::Document {
            kind: "event".into(),
            id: id.to_string(),
            source,
        })?;
        sqlx::query("INSERT INTO events (id, data) VALUES ($1, $2)")
            .bind(id)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest `limit` events, oldest first.
    pub async fn recent_events<T: DeserializeOwned>(&self, limit: i64) -> Result<Vec<T>> {
        let rows = sqlx::query("SELECT id, data FROM events ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.into_iter().rev() {
            let id: i64 = r.try_get(0)?;
            let data: String = r.try_get(1)?;
            out.push(
                serde_json::from_str(&data).map_err(|source| DbError::Document {
                    kind: "event".into(),
                    id: id.to_string(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    pub async fn max_event_id(&self) -> Result<i64> {
        let r = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get::<i64, _>(0).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_round_trip() {
        let d = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}?mode=rwc", d.path().join("m.db").display());
        let db = Db::open(&url).await.expect("opens");
        db.put("vm", "a", &serde_json::json!({"name": "x"}))
            .await
            .expect("put");
        db.put("vm", "a", &serde_json::json!({"name": "y"}))
            .await
            .expect("upsert");
        let all: Vec<serde_json::Value> = db.all("vm").await.expect("all");
        assert_eq!(all, vec![serde_json::json!({"name": "y"})]);
        db.add_event(1, &serde_json::json!({"d": 1}))
            .await
            .expect("event");
        assert_eq!(db.max_event_id().await.expect("max"), 1);
        db.delete("vm", "a").await.expect("delete");
        // Reopening runs no migration twice.
        drop(db);
        let db = Db::open(&url).await.expect("reopens");
        assert!(db
            .get::<serde_json::Value>("vm", "a")
            .await
            .expect("get")
            .is_none());
    }
}
