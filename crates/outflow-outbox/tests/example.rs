//! Runs `examples/order_service.rs` against a fresh database, as the README quickstart
//! does, and checks what it wrote.

use std::process::Command;

use outflow_testkit::fresh_database;
use serde_json::Value;
use uuid::Uuid;

fn run_order_service(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "-p",
            "outflow-outbox",
            "--example",
            "order_service",
            "--",
        ])
        .args(args)
        .output()
        .expect("cargo runs")
}

#[tokio::test]
async fn order_service_writes_one_event_per_order() {
    let db = fresh_database("outbox_example").await;
    let url = db.url();

    for _ in 0..2 {
        let out = run_order_service(&[&url, "5"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "wrote 5 orders and 5 OrderCreated events\n"
        );
    }

    let client = db.connect().await;
    let rows = client
        .query(
            "select o.id, o.customer, o.total::text, e.aggregatetype, e.type, e.payload \
             from orders o full join outbox e on e.aggregateid = o.id::text order by o.id",
            &[],
        )
        .await
        .unwrap();
    // Two runs of five orders, each order with exactly one event and no event without order.
    assert_eq!(rows.len(), 10);
    for row in &rows {
        let order_id: Option<Uuid> = row.get(0);
        let order_id = order_id.expect("every event has its order");
        let customer: String = row.get(1);
        let total: String = row.get(2);
        assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("order"));
        assert_eq!(
            row.get::<_, Option<String>>(4).as_deref(),
            Some("OrderCreated")
        );
        let payload: Option<Value> = row.get(5);
        assert_eq!(
            payload,
            Some(serde_json::json!({
                "orderId": order_id.to_string(),
                "customer": customer,
                "total": total,
            }))
        );
    }
}

#[test]
fn order_service_explains_bad_arguments() {
    let out = run_order_service(&[]);
    assert_eq!(out.status.code(), Some(2));
    // Cargo may print its own lines first (waiting for a build lock), so check the end.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with("\nusage: order_service <postgres url> [count]\n")
            || stderr == "usage: order_service <postgres url> [count]\n",
        "{stderr}"
    );
    let out = run_order_service(&["postgres://127.0.0.1/x", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = "count must be a whole number (invalid digit found in string)\n\
                    usage: order_service <postgres url> [count]\n";
    assert!(
        stderr == expected || stderr.ends_with(&format!("\n{expected}")),
        "{stderr}"
    );
}
