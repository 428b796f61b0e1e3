//! The same checks as the `batch_reader` fuzz target, run for a bounded time
//! over random bytes and over mutations of valid batches, so every test run
//! shows that no input makes the reader panic.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use spool_protocol::batch::{BatchBuilder, HEADER_LEN};
use spool_protocol::fuzzing::exercise_batch_reader;

const BUDGET: Duration = Duration::from_secs(2);

fn valid_batch(rng: &mut impl Rng) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for _ in 0..rng.random_range(1..8) {
        let key: Vec<u8> = (0..rng.random_range(0..6)).map(|_| rng.random()).collect();
        let value: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let header: (&[u8], &[u8]) = (b"h", &value[..value.len().min(3)]);
        let key = if rng.random_bool(0.5) {
            Some(key.as_slice())
        } else {
            None
        };
        b.push(
            rng.random_range(-5..5),
            key,
            &value,
            &[header][..rng.random_range(0..2)],
        )
        .unwrap();
    }
    b.finish().unwrap().to_vec()
}

#[test]
fn batch_reader_survives_random_and_mutated_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5b00_0001);
    let started = Instant::now();
    let mut runs = 0u64;
    let mut accepted_mutants = 0u64;
    while started.elapsed() < BUDGET {
        // Pure noise, usually rejected at the header.
        let noise: Vec<u8> = (0..rng.random_range(0..256))
            .map(|_| rng.random())
            .collect();
        exercise_batch_reader(&noise);

        // Structured mutants: valid batches with bytes flipped, truncated or
        // extended, or record bytes maxed out; the length and CRC are then
        // recomputed half the time so the record parser itself is attacked.
        let mut data = valid_batch(&mut rng);
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..4) {
                _ if data.is_empty() => data.push(rng.random()),
                0 => {
                    let i = rng.random_range(0..data.len());
                    data[i] ^= rng.random_range(1..=255u8);
                }
                1 => data.truncate(rng.random_range(0..data.len())),
                2 => data.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
                _ if data.len() > HEADER_LEN => {
                    let i = rng.random_range(HEADER_LEN..data.len());
                    data[i] = 0xff;
                }
                _ => {}
            }
        }
        if rng.random_bool(0.5) && data.len() >= HEADER_LEN {
            let len = data.len() as u32;
            data[8..12].copy_from_slice(&len.to_le_bytes());
            let crc = crc32fast::hash(&data[16..]);
            data[12..16].copy_from_slice(&crc.to_le_bytes());
            if spool_protocol::Batch::validate(&data).is_ok() {
                accepted_mutants += 1;
            }
        }
        exercise_batch_reader(&data);
        runs += 1;
    }
    assert!(runs > 1000, "only {runs} inputs in {BUDGET:?}");
    eprintln!("{runs} inputs, {accepted_mutants} re-CRC'd mutants still valid");
}

fn valid_frames(rng: &mut impl Rng) -> Vec<u8> {
    use spool_protocol::requests::*;
    use spool_protocol::FrameCodec;
    use tokio_util::codec::Encoder;
    let mut out = bytes::BytesMut::new();
    let mut codec = FrameCodec::default();
    for i in 0..rng.random_range(1..4u32) {
        let request = match rng.random_range(0..4) {
            0 => Request::Produce(ProduceRequest {
                topic: "t".into(),
                partition: rng.random(),
                acks: Acks::All,
                batch: valid_batch(rng).into(),
            }),
            1 => Request::Fetch(FetchRequest {
                topic: "topic".into(),
                partition: 1,
                offset: rng.random(),
                max_bytes: rng.random(),
                max_wait_ms: 5,
            }),
            2 => Request::CreateTopic(CreateTopicRequest {
                name: "n".into(),
                partitions: 3,
                settings: TopicSettings::default(),
            }),
            _ => Request::ListTopics(ListTopicsRequest),
        };
        codec.encode(request.to_frame(i), &mut out).unwrap();
    }
    out.to_vec()
}

#[test]
fn frame_decoder_survives_random_and_mutated_input() {
    use spool_protocol::fuzzing::exercise_frame_decoder;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf4a3_0001);
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < BUDGET {
        let noise: Vec<u8> = (0..rng.random_range(0..128))
            .map(|_| rng.random())
            .collect();
        exercise_frame_decoder(&noise);
        let mut data = valid_frames(&mut rng);
        for _ in 0..rng.random_range(0..4) {
            let i = rng.random_range(0..data.len());
            match rng.random_range(0..3) {
                0 => data[i] ^= rng.random_range(1..=255u8),
                1 => data.truncate(i),
                _ => data.insert(i, rng.random()),
            }
            if data.is_empty() {
                break;
            }
        }
        exercise_frame_decoder(&data);
        runs += 1;
    }
    assert!(runs > 1000, "only {runs} inputs in {BUDGET:?}");
}
