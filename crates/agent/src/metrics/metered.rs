//! A volume's I/O as its clients see it: [`Metered`] wraps the device a frontend serves (a
//! target's handle) and counts every request in [`VolumeIo`]: operations and errors by kind,
//! bytes read, written, zeroed and trimmed, and a latency histogram per kind. Only relaxed
//! atomic additions on a fixed set of counters: no lock and no allocation per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_block::{BlockDevice, ExportInfo, Extent, IoError};

/// A kind of client request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Trim,
        Op::WriteZeroes,
        Op::BlockStatus,
    ];

    /// Its `op` label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::WriteZeroes => "write_zeroes",
            Op::BlockStatus => "block_status",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The latency buckets' upper bounds in microseconds: 50 µs, doubling, to about 6.6 s (a
/// request waits at most the client timeout, 30 s, which falls in the last, unbounded one).
const BUCKETS_MICROS: [u64; 18] = {
    let mut bounds = [0; 18];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 50 << i;
        i += 1;
    }
    bounds
};

/// A latency histogram of atomics: one counter per bucket (plus one past the last bound) and
/// the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// (upper bound in seconds, requests in this bucket alone), finite bounds only.
    pub buckets: Vec<(f64, u64)>,
    /// Every request observed, the unbounded bucket's included.
    pub count: u64,
    pub sum_seconds: f64,
}

impl Latency {
    fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        LatencySnapshot {
            buckets: BUCKETS_MICROS
                .iter()
                .zip(&counts)
                .map(|(&bound, &count)| (bound as f64 / 1e6, count))
                .collect(),
            count: counts.iter().sum(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The counters of one kind of request.
#[derive(Debug, Default)]
pub struct OpCounters {
    /// Requests answered, successfully or not.
    pub operations: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    pub latency: Latency,
}

/// Every count of one volume's client I/O (on the node that runs its target).
#[derive(Debug, Default)]
pub struct VolumeIo {
    ops: [OpCounters; Op::ALL.len()],
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    zeroed_bytes: AtomicU64,
    trimmed_bytes: AtomicU64,
}

impl VolumeIo {
    pub fn op(&self, op: Op) -> &OpCounters {
        &self.ops[op.index()]
    }

    /// Requests of every kind answered so far.
    pub fn operations(&self) -> u64 {
        (self.ops.iter())
            .map(|op| op.operations.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Bytes returned by successful reads.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of successful writes.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Relaxed)
    }

    /// Bytes made zero by successful write-zeroes requests.
    pub fn zeroed_bytes(&self) -> u64 {
        self.zeroed_bytes.load(Ordering::Relaxed)
    }

    /// Bytes discarded by successful trims.
    pub fn trimmed_bytes(&self) -> u64 {
        self.trimmed_bytes.load(Ordering::Relaxed)
    }

    /// Counts one answered request of kind `op` that started at `started`; `bytes` goes to
    /// `total` when it succeeded.
    fn record<T>(
        &self,
        op: Op,
        started: Instant,
        result: &Result<T, IoError>,
        bytes: Option<(&AtomicU64, u64)>,
    ) {
        let counters = self.op(op);
        counters.operations.fetch_add(1, Ordering::Relaxed);
        counters.latency.observe(started.elapsed());
        match result {
            Ok(_) => {
                if let Some((total, bytes)) = bytes {
                    total.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A block device whose requests are counted in a [`VolumeIo`]; otherwise the device itself.
pub struct Metered<D> {
    device: D,
    io: Arc<VolumeIo>,
}

impl<D> Metered<D> {
    pub fn new(device: D, io: Arc<VolumeIo>) -> Metered<D> {
        Metered { device, io }
    }

    pub fn io(&self) -> &Arc<VolumeIo> {
        &self.io
    }
}

impl<D: Clone> Clone for Metered<D> {
    fn clone(&self) -> Metered<D> {
        Metered {
            device: self.device.clone(),
            io: Arc::clone(&self.io),
        }
    }
}

impl<D: BlockDevice> BlockDevice for Metered<D> {
    fn info(&self) -> ExportInfo {
        self.device.info()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let started = Instant::now();
        let result = self.device.read(offset, len).await;
        let read = result.as_ref().map_or(0, |data| data.len() as u64);
        let io = &self.io;
        io.record(Op::Read, started, &result, Some((&io.read_bytes, read)));
        result
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        let started = Instant::now();
        let len = data.len() as u64;
        let result = self.device.write(offset, data, fua).await;
        let io = &self.io;
        io.record(Op::Write, started, &result, Some((&io.written_bytes, len)));
        result
    }

    async fn flush(&self) -> Result<(), IoError> {
        let started = Instant::now();
        let result = self.device.flush().await;
        self.io.record(Op::Flush, started, &result, None);
        result
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        let started = Instant::now();
        let result = self.device.trim(offset, len, fua).await;
        let io = &self.io;
        let bytes = u64::from(len);
        io.record(Op::Trim, started, &result, Some((&io.trimmed_bytes, bytes)));
        result
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        let started = Instant::now();
        let result = self.device.write_zeroes(offset, len, fua, no_hole).await;
        let io = &self.io;
        let bytes = Some((&io.zeroed_bytes, u64::from(len)));
        io.record(Op::WriteZeroes, started, &result, bytes);
        result
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        let started = Instant::now();
        let result = self.device.block_status(offset, len).await;
        self.io.record(Op::BlockStatus, started, &result, None);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that answers every request at once, failing those at offset 1.
    struct Instant0;

    impl BlockDevice for Instant0 {
        fn info(&self) -> ExportInfo {
            ExportInfo::new(1 << 20)
        }

        async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
            match offset {
                1 => Err(IoError::Io),
                _ => Ok(Bytes::from(vec![0; len as usize])),
            }
        }

        async fn write(&self, offset: u64, _data: Bytes, _fua: bool) -> Result<(), IoError> {
            match offset {
                1 => Err(IoError::Io),
                _ => Ok(()),
            }
        }

        async fn flush(&self) -> Result<(), IoError> {
            Ok(())
        }

        async fn trim(&self, _offset: u64, _len: u32, _fua: bool) -> Result<(), IoError> {
            Ok(())
        }

        async fn write_zeroes(&self, _: u64, _: u32, _: bool, _: bool) -> Result<(), IoError> {
            Ok(())
        }

        async fn block_status(&self, _offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
            Ok(vec![Extent {
                length: len,
                hole: false,
                zero: false,
            }])
        }
    }

    #[tokio::test]
    async fn given_requests_when_metered_then_each_is_counted_by_kind_with_its_bytes() {
        let io = Arc::new(VolumeIo::default());
        let device = Metered::new(Instant0, Arc::clone(&io));
        device.read(0, 4096).await.unwrap();
        device.read(1, 512).await.unwrap_err();
        device
            .write(0, Bytes::from(vec![1; 8192]), false)
            .await
            .unwrap();
        device
            .write(1, Bytes::from(vec![1; 100]), true)
            .await
            .unwrap_err();
        device.flush().await.unwrap();
        device.trim(0, 1024, false).await.unwrap();
        device.write_zeroes(0, 2048, false, true).await.unwrap();
        device.block_status(0, 4096).await.unwrap();
        let count = |op: Op| {
            let counters = io.op(op);
            (
                counters.operations.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
                counters.latency.snapshot().count,
            )
        };
        assert_eq!(count(Op::Read), (2, 1, 2));
        assert_eq!(count(Op::Write), (2, 1, 2));
        for op in [Op::Flush, Op::Trim, Op::WriteZeroes, Op::BlockStatus] {
            assert_eq!(count(op), (1, 0, 1), "{op:?}");
        }
        assert_eq!(io.read_bytes(), 4096, "a failed read returns no bytes");
        assert_eq!(io.written_bytes(), 8192, "a failed write is not counted");
        assert_eq!((io.trimmed_bytes(), io.zeroed_bytes()), (1024, 2048));
    }

    #[test]
    fn given_latencies_when_observed_then_each_lands_in_the_first_bucket_that_holds_it() {
        let latency = Latency::default();
        for micros in [10, 50, 51, 100_000, 60_000_000] {
            latency.observe(Duration::from_micros(micros));
        }
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.buckets[0], (50e-6, 2), "10 µs and exactly 50 µs");
        assert_eq!(snapshot.buckets[1], (100e-6, 1));
        // 100 ms falls in (51.2 ms, 102.4 ms].
        assert_eq!(snapshot.buckets[11], (0.1024, 1));
        let finite: u64 = snapshot.buckets.iter().map(|(_, count)| count).sum();
        assert_eq!(finite, 4, "a minute is past the last bound");
        assert!((snapshot.sum_seconds - 60.100111).abs() < 1e-9);
    }
}
