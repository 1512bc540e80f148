//! The sender's report connection: its `sms_report` calls pipelined on a
//! connection of our own ([`RespConnection`]), several on the wire at once,
//! their replies decoded by the store's one decoder ([`Cursor`]).
//!
//! Why a connection of its own: reports reach Redis without waiting for a
//! pooled connection's health check, and in the order they are made; a
//! retry after a failure goes through the pool (`Store::rewrite_report`),
//! as the batch applies at most once whichever way it comes.

use std::time::Duration;

use super::Sender;
use super::frame::{Cursor, server_error};
use super::functions::REPORT;
use super::pending::PendingReply;
use super::resp::RespConnection;
use super::{PreparedReport, ReportReply, StoreError};

/// A connection for the sender's reports. Cheap to clone; once the last clone
/// is dropped, the socket closes as soon as the reports already sent are
/// answered. After an error, open another: the connection may be broken.
#[derive(Clone, Debug)]
pub struct ReportConnection {
    conn: RespConnection,
}

impl ReportConnection {
    /// Sends `report` now; what it counted comes later. Reports sent one
    /// after another reach Redis in that order.
    pub fn send(&self, report: &PreparedReport) -> PendingReply<ReportReply> {
        let reply = self.conn.send_cmd(REPORT, report.cmd());
        PendingReply::new(async move { report_reply(&reply.await?) })
    }
}

/// Decodes `sms_report`'s reply, `[sent, duplicates, failed, dead,
/// replayed]`, exactly as on a pooled connection: an error reply keeps its
/// Redis kind (a lost queue, a missing Function), anything but an array of
/// at least five integers is a bad reply.
fn report_reply(frame: &[u8]) -> Result<ReportReply, StoreError> {
    server_error(frame).map_err(StoreError::redis(REPORT))?;
    let mut reply = Cursor::new(REPORT, frame);
    let counts = reply
        .array()?
        .ok_or_else(|| reply.bad("expected an array, got nil"))?;
    let mut left = counts;
    ReportReply::from_counts(|| {
        left = left.checked_sub(1)?;
        Some(reply.int())
    })
}

impl Sender {
    /// A connection for the sender's reports (see [`ReportConnection`]).
    pub async fn report_connection(&self) -> Result<ReportConnection, StoreError> {
        let conn = self.store.resp_connection(Duration::ZERO).await?;
        Ok(ReportConnection { conn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decode_in_order_negatives_as_zero() {
        let reply = report_reply(b"*7\r\n:3\r\n:-1\r\n$1\r\n2\r\n:0\r\n:1\r\n:9\r\n:0\r\n")
            .expect("decodes");
        assert_eq!(
            reply,
            ReportReply {
                sent: 3,
                duplicates: 0,
                failed: 2,
                dead: 0,
                replayed: true,
                skipped: 9,
                deferred: 0,
            }
        );
    }

    #[test]
    fn short_or_misshapen_replies_are_bad_replies_naming_the_function() {
        for frame in [
            &b"*4\r\n:1\r\n:1\r\n:1\r\n:1\r\n"[..],
            b"*-1\r\n",
            b"+OK\r\n",
            b"*5\r\n:1\r\n:1\r\n+x\r\n:1\r\n:1\r\n",
            b"*5\r\n:1\r\n:1\r\n",
        ] {
            let err = report_reply(frame).expect_err("bad");
            assert!(
                matches!(
                    err,
                    StoreError::Reply {
                        command: REPORT,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn error_replies_keep_the_kinds_callers_match_on() {
        let lost = report_reply(b"-LOST the queue identity is gone\r\n").expect_err("lost");
        assert!(matches!(lost, StoreError::Lost(_)), "{lost:?}");
        let missing = report_reply(b"-ERR Function not found\r\n").expect_err("missing");
        assert!(missing.needs_library(), "{missing:?}");
        let oom = report_reply(b"-OOM command not allowed\r\n").expect_err("oom");
        assert!(oom.is_out_of_memory() && oom.is_transient(), "{oom:?}");
    }
}
