//! Philox-4x32-10 uniforms for many indices at once: the computation of
//! `crate::philox::uniform`, sixteen counters side by side so the compiler vectorizes the
//! rounds (and, where the CPU has AVX2 or AVX-512, compiled for it: about twice as fast again). Integer
//! arithmetic only, so every number is `uniform`'s bit for bit.

use crate::philox::uniform;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
const LANES: usize = 16;

/// `dst = [uniform(seed, i) for i in idx]`.
pub(super) fn uniforms(seed: u64, idx: &[u64], dst: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, which is all `uniforms_avx512` needs.
        unsafe { uniforms_avx512(seed, idx, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, which is all `uniforms_avx2` needs.
        unsafe { uniforms_avx2(seed, idx, dst) };
        return;
    }
    uniforms_portable(seed, idx, dst);
}

/// `uniforms_portable` compiled for AVX-512F (sixteen lanes in one register).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn uniforms_avx512(seed: u64, idx: &[u64], dst: &mut Vec<f32>) {
    uniforms_portable(seed, idx, dst);
}

/// `uniforms_portable` compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn uniforms_avx2(seed: u64, idx: &[u64], dst: &mut Vec<f32>) {
    uniforms_portable(seed, idx, dst);
}

#[inline(always)]
fn uniforms_portable(seed: u64, idx: &[u64], dst: &mut Vec<f32>) {
    dst.clear();
    dst.reserve(idx.len());
    let mut chunks = idx.chunks_exact(LANES);
    for ch in &mut chunks {
        let mut c0 = [0u32; LANES];
        let mut c1 = [0u32; LANES];
        let mut c2 = [0u32; LANES];
        let mut c3 = [0u32; LANES];
        for l in 0..LANES {
            c0[l] = ch[l] as u32;
            c1[l] = (ch[l] >> 32) as u32;
        }
        let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
        for round in 0..10 {
            if round > 0 {
                k0 = k0.wrapping_add(W0);
                k1 = k1.wrapping_add(W1);
            }
            for l in 0..LANES {
                let p0 = M0 as u64 * c0[l] as u64;
                let p1 = M1 as u64 * c2[l] as u64;
                let n0 = (p1 >> 32) as u32 ^ c1[l] ^ k0;
                let n2 = (p0 >> 32) as u32 ^ c3[l] ^ k1;
                c0[l] = n0;
                c1[l] = p1 as u32;
                c2[l] = n2;
                c3[l] = p0 as u32;
            }
        }
        dst.extend(c0.iter().map(|&x| (x >> 8) as f32 * (1.0 / 16_777_216.0)));
    }
    dst.extend(chunks.remainder().iter().map(|&i| uniform(seed, i)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_equal_uniform() {
        let idx: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 40))
            .chain([0, 1, u64::MAX, 1 << 32, (1 << 32) - 1])
            .collect();
        for seed in [0, 7, u64::MAX, 0x1234_5678_9abc_def0] {
            let want: Vec<f32> = idx.iter().map(|&i| uniform(seed, i)).collect();
            let mut got = Vec::new();
            uniforms(seed, &idx, &mut got);
            assert_eq!(got, want, "seed {seed}");
            uniforms_portable(seed, &idx, &mut got);
            assert_eq!(got, want, "seed {seed}");
            #[cfg(target_arch = "x86_64")]
            for (avx, f) in [
                (
                    "avx2",
                    uniforms_avx2 as unsafe fn(u64, &[u64], &mut Vec<f32>),
                ),
                ("avx512f", uniforms_avx512),
            ] {
                let have = match avx {
                    "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                    _ => std::arch::is_x86_feature_detected!("avx512f"),
                };
                if have {
                    // SAFETY: the CPU has the feature `f` is compiled for.
                    unsafe { f(seed, &idx, &mut got) };
                    assert_eq!(got, want, "seed {seed}, {avx}");
                }
            }
        }
    }
}
