//! An order service that writes each order and its `OrderCreated` event in one
//! transaction.
//!
//! ```text
//! cargo run -p outflow-outbox --example order_service -- <postgres url> [count]
//! ```
//!
//! Creates the `orders` table and the outbox table when missing, then places `count`
//! orders (default 10). Each transaction inserts one order row and one outbox row, so
//! outflow delivers exactly one `OrderCreated` event per committed order. Prints one
//! line at the end: `wrote <count> orders and <count> OrderCreated events`.

use std::process::ExitCode;

use outflow_outbox::{OutboxEvent, OutboxTable};
use serde_json::json;

/// Orders placed when no count is given: enough to see a stream of events.
const DEFAULT_COUNT: u64 = 10;

const USAGE: &str = "usage: order_service <postgres url> [count]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(url), count, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let count = match count.as_deref().map(str::parse::<u64>) {
        None => DEFAULT_COUNT,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("count must be a whole number ({e})\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&url, count).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Print the whole chain of causes: the database's message is the useful part.
            let mut message = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                message.push_str(": ");
                message.push_str(&c.to_string());
                cause = c.source();
            }
            eprintln!("order_service: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);

    client
        .batch_execute(
            "create table if not exists orders (
                id uuid primary key,
                customer text not null,
                total numeric(12, 2) not null,
                created_at timestamptz not null default now()
            )",
        )
        .await?;
    let outbox = OutboxTable::default();
    outflow_outbox::ensure_table(&client, &outbox).await?;

    for n in 1..=count {
        let order_id = uuid::Uuid::now_v7();
        let customer = format!("customer-{}", n % 7 + 1);
        // Cents as an integer, rendered as a decimal string for the numeric column.
        let cents = 1_000 + n * 137 % 9_000;
        let total = format!("{}.{:02}", cents / 100, cents % 100);

        // The order and its event commit together or not at all.
        let tx = client.transaction().await?;
        tx.execute(
            "insert into orders (id, customer, total) values ($1, $2, $3::text::numeric)",
            &[&order_id, &customer, &total],
        )
        .await?;
        let event = OutboxEvent::new(
            "order",
            order_id.to_string(),
            "OrderCreated",
            json!({"orderId": order_id, "customer": customer, "total": total}),
        );
        outflow_outbox::write(&tx, &outbox, &event).await?;
        tx.commit().await?;
    }

    println!("wrote {count} orders and {count} OrderCreated events");
    drop(client);
    connection.await??;
    Ok(())
}
