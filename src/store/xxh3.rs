//! xxh3-128 under a secret, bit for bit as `xxhash_rust::xxh3::xxh3_128_with_secret`, with
//! the loop over long inputs (a block) in AVX2 when the CPU has it. The crate picks its SIMD
//! when it is compiled, and the build targets plain x86-64, so it hashes with SSE2 only:
//! checking every block read was 14% of the daemon in a cold sequential read.
//! Inputs of `MID_SIZE_MAX` bytes or fewer, and CPUs without AVX2, go to the crate.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

const MID_SIZE_MAX: usize = 240;
const SECRET_SIZE_MIN: usize = 136;
const STRIPE_LEN: usize = 64;
const SECRET_CONSUME_RATE: usize = 8;
const SECRET_MERGEACCS_START: usize = 11;
const SECRET_LASTACC_START: usize = 7;
const PRIME32_1: u64 = 0x9E37_79B1;
const PRIME32_2: u64 = 0x85EB_CA77;
const PRIME32_3: u64 = 0xC2B2_AE3D;
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;
const INITIAL_ACC: [u64; 8] = [PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1];

/// xxh3-128 of `data` under `secret` (at least `SECRET_SIZE_MIN` bytes).
pub fn xxh3_128(data: &[u8], secret: &[u8]) -> u128 {
    // As the crate asserts; the loop's offsets into the secret rely on it.
    assert!(secret.len() >= SECRET_SIZE_MIN, "an xxh3 secret is at least {SECRET_SIZE_MIN} bytes");
    #[cfg(target_arch = "x86_64")]
    if data.len() > MID_SIZE_MAX && avx2() {
        // SAFETY: the CPU has AVX2 (`avx2`), and the input is longer than a stripe.
        return unsafe { long_avx2(data, secret) };
    }
    xxhash_rust::xxh3::xxh3_128_with_secret(data, secret)
}

/// Whether the AVX2 loop runs: the CPU has AVX2 and the loop agrees with the crate on a
/// test input (checked once; a disagreement is logged and the crate does all hashing).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !std::is_x86_feature_detected!("avx2") {
            return false;
        }
        let secret: Vec<u8> = (0..192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let data: Vec<u8> = (0..5_000u32).map(|i| (i.wrapping_mul(40_503) >> 7) as u8).collect();
        // SAFETY: the CPU has AVX2.
        let same = unsafe { long_avx2(&data, &secret) } == xxhash_rust::xxh3::xxh3_128_with_secret(&data, &secret);
        if !same {
            log::error!("the AVX2 xxh3 loop disagrees with xxhash-rust: hashing without it");
        }
        same
    })
}

fn read64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn mul128_fold64(a: u64, b: u64) -> u64 {
    let r = a as u128 * b as u128;
    r as u64 ^ (r >> 64) as u64
}

fn avalanche(mut v: u64) -> u64 {
    v ^= v >> 37;
    v = v.wrapping_mul(0x1656_6791_9E37_79F9);
    v ^ (v >> 32)
}

fn merge_accs(acc: &[u64; 8], secret: &[u8], at: usize, mut result: u64) -> u64 {
    for i in 0..4 {
        result = result.wrapping_add(mul128_fold64(acc[2 * i] ^ read64(secret, at + 16 * i), acc[2 * i + 1] ^ read64(secret, at + 16 * i + 8)));
    }
    avalanche(result)
}

/// The long-input path of xxh3-128 (`xxh3_128_long_impl` of the crate), 32 bytes a step.
/// Safety: the CPU has AVX2; `input` is longer than `STRIPE_LEN` bytes and `secret` at
/// least 136.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn long_avx2(input: &[u8], secret: &[u8]) -> u128 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn accumulate(acc: &mut [__m256i; 2], input: *const u8, secret: *const u8) {
        for (i, a) in acc.iter_mut().enumerate() {
            let data = _mm256_loadu_si256(input.add(32 * i).cast());
            let key = _mm256_loadu_si256(secret.add(32 * i).cast());
            let data_key = _mm256_xor_si256(data, key);
            let product = _mm256_mul_epu32(data_key, _mm256_srli_epi64::<32>(data_key));
            // Each 64-bit lane's neighbour: the input added to the other lane of its pair.
            let swapped = _mm256_shuffle_epi32::<0b01_00_11_10>(data);
            *a = _mm256_add_epi64(product, _mm256_add_epi64(*a, swapped));
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn scramble(acc: &mut [__m256i; 2], secret: *const u8) {
        let prime = _mm256_set1_epi32(PRIME32_1 as i32);
        for (i, a) in acc.iter_mut().enumerate() {
            let mixed = _mm256_xor_si256(*a, _mm256_srli_epi64::<47>(*a));
            let key = _mm256_loadu_si256(secret.add(32 * i).cast());
            let data_key = _mm256_xor_si256(mixed, key);
            let lo = _mm256_mul_epu32(data_key, prime);
            let hi = _mm256_mul_epu32(_mm256_srli_epi64::<32>(data_key), prime);
            *a = _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(hi));
        }
    }

    let mut acc = [_mm256_loadu_si256(INITIAL_ACC.as_ptr().cast()), _mm256_loadu_si256(INITIAL_ACC.as_ptr().add(4).cast())];
    let (p, s) = (input.as_ptr(), secret.as_ptr());
    let nb_stripes = (secret.len() - STRIPE_LEN) / SECRET_CONSUME_RATE;
    let block_len = STRIPE_LEN * nb_stripes;
    let nb_blocks = (input.len() - 1) / block_len;
    for n in 0..nb_blocks {
        for i in 0..nb_stripes {
            accumulate(&mut acc, p.add(n * block_len + i * STRIPE_LEN), s.add(i * SECRET_CONSUME_RATE));
        }
        scramble(&mut acc, s.add(secret.len() - STRIPE_LEN));
    }
    let last = ((input.len() - 1) - block_len * nb_blocks) / STRIPE_LEN;
    for i in 0..last {
        accumulate(&mut acc, p.add(nb_blocks * block_len + i * STRIPE_LEN), s.add(i * SECRET_CONSUME_RATE));
    }
    accumulate(&mut acc, p.add(input.len() - STRIPE_LEN), s.add(secret.len() - STRIPE_LEN - SECRET_LASTACC_START));

    let mut lanes = [0u64; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc[0]);
    _mm256_storeu_si256(lanes.as_mut_ptr().add(4).cast(), acc[1]);
    let len = input.len() as u64;
    let lo = merge_accs(&lanes, secret, SECRET_MERGEACCS_START, len.wrapping_mul(PRIME64_1));
    let hi = merge_accs(&lanes, secret, secret.len() - 64 - SECRET_MERGEACCS_START, !len.wrapping_mul(PRIME64_2));
    lo as u128 | (hi as u128) << 64
}

#[cfg(test)]
mod tests {
    use super::xxh3_128;
    use xxhash_rust::xxh3::xxh3_128_with_secret as reference;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every length up to a few blocks of the loop, and block sizes and odd tails beyond,
    /// under secrets of the store's length and others: the same hash as xxhash-rust.
    #[test]
    fn agrees_with_xxhash_rust() {
        for (k, secret_len) in [192usize, 136, 200, 256].into_iter().enumerate() {
            let secret = bytes(secret_len, 7 + k as u64);
            let data = bytes(70_000, 99 + k as u64);
            let mut lens: Vec<usize> = (0..4_200).collect();
            lens.extend([4_096, 8_192, 16_383, 16_384, 16_385, 65_536, 69_999, 70_000]);
            for n in lens {
                for off in [0, 3] {
                    let d = &data[off..off + n.min(data.len() - off)];
                    assert_eq!(xxh3_128(d, &secret), reference(d, &secret), "{} bytes at {off}, secret of {secret_len}", d.len());
                }
            }
        }
    }

    #[test]
    fn the_avx2_loop_is_taken_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(super::avx2(), std::is_x86_feature_detected!("avx2"));
    }
}
