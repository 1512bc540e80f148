//! What a sender's gateway keeps in Redis: the token bucket of its shared
//! throughput cap (`sms_gateway_take`), the breaker state it publishes for
//! the monitor (`sms_sender_state`), and whether its channel is paused
//! (`sms_pause`, by an operator).

use std::time::Duration;

use redis::Value;

use super::reply::{array, int};
use super::{Inspector, Operator, Sender, Store, StoreError};

/// The field of partition 0's queue hash that pauses channel `channel`.
fn paused_field(channel: &str) -> String {
    format!("paused:{channel}")
}

impl Sender {
    /// Takes up to `want` tokens from gateway `gateway`'s bucket, which fills
    /// at `rate` per second up to `burst` (`sms_gateway_take`). Returns the
    /// tokens granted and, when fewer than wanted, how long until the next.
    pub async fn take_tokens(
        &self,
        gateway: &str,
        rate: u32,
        burst: u32,
        want: u32,
    ) -> Result<(u32, Duration), StoreError> {
        const NAME: &str = "sms_gateway_take";
        let home = self.store.partition(0);
        let keys = [home.keys.queue(), home.keys.gateway_bucket(gateway)];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            rate.to_string().into_bytes(),
            burst.to_string().into_bytes(),
            want.to_string().into_bytes(),
        ];
        let mut reply = array(NAME, home.fcall(NAME, &keys, args).await?)?.into_iter();
        let granted = int(NAME, reply.next().unwrap_or(Value::Nil))?.max(0);
        let wait = int(NAME, reply.next().unwrap_or(Value::Nil))?.max(0);
        Ok((
            u32::try_from(granted).unwrap_or(u32::MAX),
            Duration::from_millis(wait as u64),
        ))
    }

    /// Publishes the sender's gateway and breaker state in its hash of
    /// partition 0 (`sms_sender_state`); `opened` counts an opening.
    pub async fn publish_state(
        &self,
        consumer: &str,
        gateway: &str,
        breaker: &str,
        opened: bool,
    ) -> Result<(), StoreError> {
        const NAME: &str = "sms_sender_state";
        let home = self.store.partition(0);
        let keys = [home.keys.queue(), home.keys.sender_stats(consumer)];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            gateway.as_bytes().to_vec(),
            breaker.as_bytes().to_vec(),
            if opened { b"1".to_vec() } else { b"0".to_vec() },
        ];
        home.fcall(NAME, &keys, args).await.map(drop)
    }

    /// Whether an operator paused this sender's channel.
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        self.store.is_paused().await
    }
}

impl Inspector {
    /// Whether an operator paused this handle's channel.
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        self.store.is_paused().await
    }
}

impl Operator {
    /// Pauses (`true`) or resumes this handle's channel (`sms_pause`):
    /// its senders stop starting sends, and go on when it is resumed.
    /// Returns whether that changed anything.
    pub async fn set_paused(&self, paused: bool) -> Result<bool, StoreError> {
        const NAME: &str = "sms_pause";
        let home = self.store.partition(0);
        let keys = [home.keys.queue()];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            self.store.group().as_bytes().to_vec(),
            if paused { b"1".to_vec() } else { b"0".to_vec() },
        ];
        Ok(int(NAME, home.fcall(NAME, &keys, args).await?)? == 1)
    }
}

impl Store {
    async fn is_paused(&self) -> Result<bool, StoreError> {
        let home = self.partition(0);
        let mut conn = home.conn().await?;
        let paused: bool = redis::cmd("HEXISTS")
            .arg(home.keys.queue())
            .arg(paused_field(self.group()))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("HEXISTS (paused)"))?;
        Ok(paused)
    }
}
