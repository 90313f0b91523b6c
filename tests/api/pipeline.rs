//! Pipelined reads (`db::Pipeline`): many callers on few connections, each getting its own
//! answer; statements prepared once; a broken connection reopened; typed errors.

use std::time::Duration;

use futures::future::join_all;
use hearth::db::{Pipeline, PipelineError};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::helpers::migrated_database;

const ECHO: &str = "SELECT $1::int4 + 1 AS n, pg_backend_pid() AS pid";

async fn pipeline(size: usize) -> (Pipeline, PgPool) {
    let (_, options) = migrated_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("test pool");
    let pipeline = Pipeline::new(&pool.connect_options(), None, size, Duration::from_secs(5));
    (pipeline, pool)
}

async fn echo(pipeline: &Pipeline, i: i32) -> Result<(i32, i32), PipelineError> {
    let rows = pipeline.query(ECHO, &[&i]).await?;
    Ok((rows[0].get("n"), rows[0].get("pid")))
}

#[tokio::test]
async fn concurrent_queries_share_the_connections_and_each_gets_its_own_answer() {
    for size in [1, 2] {
        // Arrange
        let (pipeline, _pool) = pipeline(size).await;

        // Act: 500 queries in flight at once.
        let answers = join_all((0..500).map(|i| echo(&pipeline, i))).await;

        // Assert
        let mut pids = std::collections::HashSet::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let (n, pid) = answer.expect("every query answers");
            assert_eq!(n, i as i32 + 1, "query {i} got another query's answer");
            pids.insert(pid);
        }
        assert_eq!(pids.len(), size, "{size} connection(s), round robin");
    }
}

#[tokio::test]
async fn a_statement_is_prepared_once_per_connection() {
    let (pipeline, _pool) = pipeline(1).await;

    for i in 0..20 {
        echo(&pipeline, i).await.unwrap();
    }

    let rows = pipeline
        .query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1",
            &[&ECHO],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>("n"), 1);
}

#[tokio::test]
async fn a_broken_connection_is_reopened_by_the_next_queries() {
    // Arrange
    let (pipeline, pool) = pipeline(1).await;
    let (_, before) = echo(&pipeline, 1).await.unwrap();

    // Act: the server ends the pipeline's session, as a restart would.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(before)
        .execute(&pool)
        .await
        .unwrap();

    // Assert: a query may fail while the client learns of the break, but only as
    // `Unavailable`, and a new session answers soon after.
    let mut failures = 0;
    let after = loop {
        match echo(&pipeline, 2).await {
            Ok((n, pid)) => {
                assert_eq!(n, 3);
                break pid;
            }
            Err(PipelineError::Unavailable(_)) if failures < 20 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("after {failures} failures: {other:?}"),
        }
    };
    assert_ne!(after, before, "a new server session");
}

#[tokio::test]
async fn a_bad_statement_is_a_query_error_and_an_unreachable_server_is_unavailable() {
    let (pipeline, _pool) = pipeline(1).await;

    let bad = pipeline.query("SELECT FROM no_such_table", &[]).await;
    match bad {
        Err(PipelineError::Query(error)) => {
            assert_eq!(
                error.code(),
                Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
            );
        }
        other => panic!("expected a query error, got {other:?}"),
    }
    // The connection survives a failed statement.
    assert_eq!(echo(&pipeline, 41).await.unwrap().0, 42);

    let nowhere = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(1);
    let unreachable = Pipeline::new(&nowhere, None, 1, Duration::from_secs(5));
    assert!(matches!(
        unreachable.query(ECHO, &[&1]).await,
        Err(PipelineError::Unavailable(_))
    ));
}

#[tokio::test]
async fn close_ends_the_server_sessions() {
    // Arrange
    let (pipeline, pool) = pipeline(1).await;
    let (_, pid) = echo(&pipeline, 1).await.unwrap();

    // Act
    pipeline.close();

    // Assert: the session is gone once the connection has sent its goodbye.
    let mut alive = true;
    for _ in 0..100 {
        alive = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
        )
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive, "the pipelined session {pid} is still open");
}
