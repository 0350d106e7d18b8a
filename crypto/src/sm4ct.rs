//! Constant-time SM4 (GB/T 32907-2016): no tables, no secret-dependent
//! branches or memory accesses, on every target.
//!
//! SM4 is a 32-round unbalanced Feistel network on four 32-bit big-endian
//! words: `X[i+4] = X[i] ^ T(X[i+1] ^ X[i+2] ^ X[i+3] ^ rk[i])`, `T = L ∘ τ`,
//! `τ` the byte-wise S-box, `L(B) = B ^ (B <<< 2) ^ (B <<< 10) ^ (B <<< 18) ^
//! (B <<< 24)`; the ciphertext is `X35 || X34 || X33 || X32`. The S-box is
//! computed by a boolean circuit (`sm4ct/circuit.rs`: GF(2⁸) inversion in a tower
//! field, 90 XOR + 36 AND) instead of a table look-up, in two layouts:
//!
//! * **Bitsliced batches** (CTR keystream, runs of blocks): 64 blocks at a
//!   time, stored as 128 `u64` bit planes — plane `i` of word `j` holds bit
//!   `i` of `Xj` of every block, block `k` in bit `k`. One evaluation of the
//!   circuit is then 64 S-boxes, and the rotations of `L` are only a
//!   renaming of planes. Blocks leave (and, unless they are counters starting
//!   at a multiple of 64, enter) through 64×64 bit-matrix transposes.
//! * **One block** (key schedule, the [`Sm4`] block cipher): the four bytes of
//!   a word are four bit positions (0, 8, 16, 24) of `u32` "planes", so one
//!   evaluation of the circuit is `τ` of a word.
//!
//! The circuit computes `S(x ⊕ K0) ⊕ c`. The batch path folds both constants
//! away: `K0` goes into the round keys, and `c` is not added at all — the
//! state words then differ from the true ones by known constants
//! (`L(c,c,c,c)` on every other group of four words), which are folded into
//! the round keys too and are zero again after round 32 (see
//! `sliced_keys`). The one-block path adds both constants explicitly.
//!
//! All loop bounds and indices depend only on lengths, counters and round
//! numbers. Key material made for one call (key planes, one-block state) is
//! zeroized before it returns and [`Sm4`] zeroizes its round keys on drop;
//! the batch state and the copies the compiler keeps in registers and stack
//! slots are not wiped (as in [`crate::simd`]).

mod block;
mod circuit;

use zeroize::Zeroize;

pub use block::Sm4;

/// Blocks per bitsliced batch: one per bit of a `u64` plane. (Wider planes
/// of two or four `u64`s measured slower on x86-64: LLVM keeps them in
/// general-purpose registers and runs out of them.)
pub(crate) const BATCH: usize = 64;

/// System parameter FK (key schedule whitening).
const FK: [u32; 4] = [0xA3B1_BAC6, 0x56AA_3350, 0x677D_9197, 0xB270_22DC];

/// Fixed parameters CK: byte `j` of `CK[i]` is `(4i + j) * 7 mod 256`.
pub(crate) const CK: [u32; 32] = {
    let mut ck = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        let mut j = 0;
        while j < 4 {
            let byte = (((4 * i + j) * 7) % 256) as u32;
            ck[i] |= byte << (24 - 8 * j);
            j += 1;
        }
        i += 1;
    }
    ck
};

/// A byte repeated in all four bytes of a word.
const fn splat_byte(b: u8) -> u32 {
    u32::from_ne_bytes([b; 4])
}

/// Linear transform of the encryption rounds.
pub(crate) const fn l(b: u32) -> u32 {
    b ^ b.rotate_left(2) ^ b.rotate_left(10) ^ b.rotate_left(18) ^ b.rotate_left(24)
}

/// Linear transform of the key schedule.
const fn l_key(b: u32) -> u32 {
    b ^ b.rotate_left(13) ^ b.rotate_left(23)
}

/// `τ`: the S-box on each byte of `a`, through the circuit with the four
/// bytes as bit positions 0, 8, 16 and 24 of `u32` planes.
pub(crate) fn tau(a: u32) -> u32 {
    const LOW: u32 = 0x0101_0101;
    let a = a ^ splat_byte(circuit::K0);
    let planes: [u32; 8] = core::array::from_fn(|i| (a >> i) & LOW);
    // The circuit only XORs and ANDs, so the other bit positions stay zero.
    let y = circuit::sbox(planes);
    let mut out = 0;
    for (i, p) in y.iter().enumerate() {
        out |= p << i;
    }
    out ^ splat_byte(circuit::C)
}

/// Splits a 128-bit big-endian block value into the words `X0..X3`.
#[inline(always)]
fn to_words(v: u128) -> [u32; 4] {
    [
        (v >> 96) as u32,
        (v >> 64) as u32,
        (v >> 32) as u32,
        v as u32,
    ]
}

/// Output `X35 || X34 || X33 || X32` as a 128-bit big-endian value.
#[inline(always)]
fn from_final_words(x: &[u32; 4]) -> u128 {
    (u128::from(x[3]) << 96)
        | (u128::from(x[2]) << 64)
        | (u128::from(x[1]) << 32)
        | u128::from(x[0])
}

/// Expands `key` into the 32 round keys (GB/T 32907-2016, §7.3).
pub(crate) fn expand_key(key: &[u8; 16]) -> [u32; 32] {
    let mut k = to_words(u128::from_be_bytes(*key));
    for (w, fk) in k.iter_mut().zip(FK) {
        *w ^= fk;
    }
    let mut rk = [0u32; 32];
    for (i, (r, ck)) in rk.iter_mut().zip(CK).enumerate() {
        // k is a sliding window K[i..i+4]; slot i % 4 is replaced by K[i+4].
        let j = i % 4;
        k[j] ^= l_key(tau(k[(j + 1) % 4] ^ k[(j + 2) % 4] ^ k[(j + 3) % 4] ^ ck));
        *r = k[j];
    }
    k.zeroize();
    rk
}

/// Runs the 32 rounds on one block with the round keys in `rk`'s order
/// (reversed round keys decrypt).
fn crypt_block<'a>(rk: impl Iterator<Item = &'a u32>, block: &mut [u8; 16]) {
    let mut x = to_words(u128::from_be_bytes(*block));
    for (i, k) in rk.enumerate() {
        let j = i % 4;
        x[j] ^= l(tau(x[(j + 1) % 4] ^ x[(j + 2) % 4] ^ x[(j + 3) % 4] ^ k));
    }
    *block = from_final_words(&x).to_be_bytes();
    x.zeroize();
}

/// Encrypts one block in place.
pub(crate) fn encrypt_block(rk: &[u32; 32], block: &mut [u8; 16]) {
    crypt_block(rk.iter(), block);
}

/// Decrypts one block in place.
pub(crate) fn decrypt_block(rk: &[u32; 32], block: &mut [u8; 16]) {
    crypt_block(rk.iter().rev(), block);
}

/// The sliced state of a batch: `[X3, X2, X1, X0]`, 32 planes each, so that
/// plane `b` holds bit `b` of the 128-bit big-endian values of the 64
/// blocks, block `k` in bit `k`.
type State = [[u64; 32]; 4];

/// All ones if bit 0 of `bit` is 1, all zeros if it is 0 (no branch).
#[inline(always)]
fn mask(bit: u64) -> u64 {
    0u64.wrapping_sub(bit & 1)
}

/// Rows `a[r]` and `b[r]` swap bits `c + J` of `a[r]` and `c` of `b[r]` for
/// the bits `c` set in `mask`.
#[inline(always)]
fn swap_bits<const J: usize>(a: &mut [u64], b: &mut [u64], mask: u64) {
    for (ra, rb) in a.iter_mut().zip(b) {
        let t = ((*ra >> J) ^ *rb) & mask;
        *ra ^= t << J;
        *rb ^= t;
    }
}

/// A stage of [`transpose`] inside 32 rows: rows `r` and `r + J`
/// (`r & J == 0`) swap their bits `c + J` and `c` (`c & J == 0`, the bits
/// set in `mask`).
#[inline(always)]
fn transpose_stage<const J: usize>(m: &mut [u64; 32], mask: u64) {
    for chunk in m.chunks_exact_mut(2 * J) {
        let (lo, hi) = chunk.split_at_mut(J);
        swap_bits::<J>(lo, hi, mask);
    }
}

/// Transposes the 64×64 bit matrix with rows `a` (0..32) and `b` (32..64):
/// bit `c` of row `r` and bit `r` of row `c` trade places.
#[inline(always)]
fn transpose(a: &mut [u64; 32], b: &mut [u64; 32]) {
    swap_bits::<32>(a, b, 0x0000_0000_FFFF_FFFF);
    for m in [a, b] {
        transpose_stage::<16>(m, 0x0000_FFFF_0000_FFFF);
        transpose_stage::<8>(m, 0x00FF_00FF_00FF_00FF);
        transpose_stage::<4>(m, 0x0F0F_0F0F_0F0F_0F0F);
        transpose_stage::<2>(m, 0x3333_3333_3333_3333);
        transpose_stage::<1>(m, 0x5555_5555_5555_5555);
    }
}

/// Round keys for the bitsliced rounds: `rk[i] ⊕ K0 ⊕ E[i+1] ⊕ E[i+2] ⊕
/// E[i+3]`, where `E[j]` is the known offset of sliced state word `j` from
/// the true `X[j]` when the S-box output constant is left out: `E[0..4] = 0`
/// and `E[j+4] = E[j] ⊕ L(c,c,c,c)`, so `E[j]` is `L(c,c,c,c)` exactly when
/// `j / 4` is odd — and zero for the output words `X32..X35`.
pub(crate) fn sliced_keys(rk: &[u32; 32]) -> [u32; 32] {
    let lc = l(splat_byte(circuit::C));
    let e = |j: usize| if (j / 4) % 2 == 1 { lc } else { 0 };
    core::array::from_fn(|i| rk[i] ^ splat_byte(circuit::K0) ^ e(i + 1) ^ e(i + 2) ^ e(i + 3))
}

/// Round keys as planes: plane `i` of round `r` is all ones where bit `i` of
/// `sk[r]` is set.
fn key_planes(sk: &[u32; 32]) -> [[u64; 32]; 32] {
    let mut kp = [[0; 32]; 32];
    for (planes, &k) in kp.iter_mut().zip(sk) {
        for (i, p) in planes.iter_mut().enumerate() {
            *p = mask(u64::from(k >> i));
        }
    }
    kp
}

/// `acc ^= L(S'(s))` on sliced words, where `S'` is [`circuit::sbox`] on
/// each byte. Not inlined: as a function of its own (four circuits and `L`)
/// it gets much better register allocation than inside the round loop.
#[inline(never)]
fn t_into(acc: &mut [u64; 32], s: &[u64; 32]) {
    let (s8, _) = s.as_chunks::<8>();
    let y = [
        circuit::sbox(s8[0]),
        circuit::sbox(s8[1]),
        circuit::sbox(s8[2]),
        circuit::sbox(s8[3]),
    ];
    let t = y.as_flattened();
    // Bit i of B <<< r is bit i - r of B (mod 32), so bit i of L(B) is
    // B[i] ^ B[i-2] ^ B[i-10] ^ B[i-18] ^ B[i-24]; with h[j] = B[j] ^ B[j-8]
    // that is h[i+8] ^ h[i-2] ^ B[i-18], three XORs instead of four. Spelled
    // out so that every index is a constant.
    macro_rules! l_layer {
        ($($i:literal)*) => {
            let h = [$(t[$i] ^ t[($i + 24) % 32]),*];
            $(acc[$i] ^= h[($i + 8) % 32] ^ h[($i + 30) % 32] ^ t[($i + 14) % 32];)*
        };
    }
    l_layer!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
}

/// Two consecutive rounds: `x0 ^= T(x1 ^ x2 ^ x3 ^ k0)`, then
/// `x1 ^= T(x2 ^ x3 ^ x0 ^ k1)`, sharing `x2 ^ x3`. `k0`, `k1` are the
/// round keys as planes.
#[inline(always)]
fn round_pair([x0, x1, x2, x3]: [&mut [u64; 32]; 4], k0: &[u64; 32], k1: &[u64; 32]) {
    let mut p = [0; 32];
    for ((pi, a), b) in p.iter_mut().zip(x2.iter()).zip(x3.iter()) {
        *pi = a ^ b;
    }
    let mut s = [0; 32];
    for (((si, pi), v), k) in s.iter_mut().zip(&p).zip(x1.iter()).zip(k0) {
        *si = pi ^ v ^ k;
    }
    t_into(x0, &s);
    for ((pi, v), k) in p.iter_mut().zip(x0.iter()).zip(k1) {
        *pi ^= v ^ k;
    }
    t_into(x1, &p);
}

/// Loads the blocks `input(0..64)` (big-endian values) into `x`.
#[inline(always)]
fn slice_blocks(x: &mut State, input: impl Fn(usize) -> u128) {
    // Row k of each half holds that half of block k; after the transpose,
    // row c holds bit c of the half of every block.
    let [x3, x2, x1, x0] = x;
    for k in 0..64 {
        let v = input(k);
        let (lo, hi) = if k < 32 {
            (&mut x3[k], &mut x1[k])
        } else {
            (&mut x2[k - 32], &mut x0[k - 32])
        };
        *lo = v as u64;
        *hi = (v >> 64) as u64;
    }
    transpose(x3, x2);
    transpose(x1, x0);
}

/// Loads the counter blocks `ctr .. ctr + 64` into `x` when `ctr` is a
/// multiple of 64: then no carry crosses the batch, and bit `b` of block `k`
/// is bit `b` of `k` for `b < 6` and bit `b` of `ctr` otherwise — constants,
/// no transpose needed.
#[inline(always)]
fn slice_aligned_counters(x: &mut State, ctr: u128) {
    /// Bit `k` of `PAT[b]` is bit `b` of `k`.
    const PAT: [u64; 6] = [
        0xAAAA_AAAA_AAAA_AAAA,
        0xCCCC_CCCC_CCCC_CCCC,
        0xF0F0_F0F0_F0F0_F0F0,
        0xFF00_FF00_FF00_FF00,
        0xFFFF_0000_FFFF_0000,
        0xFFFF_FFFF_0000_0000,
    ];
    let (lo, hi) = (ctr as u64, (ctr >> 64) as u64);
    let (lo_planes, hi_planes) = x.as_flattened_mut().split_at_mut(64);
    for (b, plane) in lo_planes.iter_mut().enumerate() {
        *plane = PAT.get(b).copied().unwrap_or(mask(lo >> b));
    }
    for (b, plane) in hi_planes.iter_mut().enumerate() {
        *plane = mask(hi >> b);
    }
}

/// Runs the rounds on the loaded state `x` with key planes `kp` and writes
/// the first `out.len()` (at most 64) ciphertext blocks.
#[inline(always)]
fn encrypt_sliced(kp: &[[u64; 32]; 32], x: &mut State, out: &mut [[u8; 16]]) {
    debug_assert!(out.len() <= BATCH);
    {
        let [x3, x2, x1, x0] = &mut *x;
        for k in kp.as_chunks::<4>().0 {
            round_pair([x0, x1, x2, x3], &k[0], &k[1]);
            round_pair([x2, x3, x0, x1], &k[2], &k[3]);
        }
    }
    // Slots X0..X3 now hold X32..X35, so after transposing, a block's low
    // half reads X34 || X35 and its high half X32 || X33; the ciphertext is
    // X35 || X34 || X33 || X32, i.e. both halves with their words swapped.
    let [x3, x2, x1, x0] = x;
    transpose(x3, x2);
    transpose(x1, x0);
    for (k, o) in out.iter_mut().enumerate() {
        let (lo, hi) = if k < 32 {
            (x3[k], x1[k])
        } else {
            (x2[k - 32], x0[k - 32])
        };
        let v = (u128::from(lo.rotate_left(32)) << 64) | u128::from(hi.rotate_left(32));
        *o = v.to_be_bytes();
    }
}

/// CTR keystream over whole blocks of `out` (a trailing partial block is left
/// untouched): block `i` is the encryption of `counter + i` (mod 2^128).
pub(crate) fn keystream(rk: &[u32; 32], counter: u128, out: &mut [u8]) {
    let (mut blocks, _) = out.as_chunks_mut::<16>();
    if blocks.is_empty() {
        return;
    }
    let mut kp = key_planes(&sliced_keys(rk));
    let mut x = [[0; 32]; 4];
    let mut ctr = counter;
    while !blocks.is_empty() {
        // Batches start at multiples of 64 (the mask PRG's counters always
        // do), so only a misaligned first batch needs the transpose.
        let misaligned = (ctr % BATCH as u128) as usize;
        let (chunk, rest) = blocks.split_at_mut((BATCH - misaligned).min(blocks.len()));
        if misaligned == 0 {
            slice_aligned_counters(&mut x, ctr);
        } else {
            slice_blocks(&mut x, |i| ctr.wrapping_add(i as u128));
        }
        encrypt_sliced(&kp, &mut x, chunk);
        ctr = ctr.wrapping_add(chunk.len() as u128);
        blocks = rest;
    }
    kp.zeroize();
}

/// Encrypts (`sk` from [`sliced_keys`] of the round keys) or decrypts (of the
/// reversed round keys) blocks in place, 64 at a time.
pub(crate) fn crypt_blocks(sk: &[u32; 32], blocks: &mut [[u8; 16]]) {
    let mut kp = key_planes(sk);
    let mut x = [[0; 32]; 4];
    for chunk in blocks.chunks_mut(BATCH) {
        slice_blocks(&mut x, |i| {
            chunk.get(i).map_or(0, |b| u128::from_be_bytes(*b))
        });
        encrypt_sliced(&kp, &mut x, chunk);
    }
    kp.zeroize();
}

#[cfg(test)]
mod tests;
