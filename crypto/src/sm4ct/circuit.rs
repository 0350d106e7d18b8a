//! The SM4 S-box as a boolean circuit (XOR and AND only, no look-ups).
//!
//! `S(x) = A·I(A·x ⊕ c) ⊕ c` (see [`crate::simd`]): `A` the circulant matrix of
//! `0xA7`, `c = 0xD3`, `I` inversion in GF(2⁸) modulo `0x1F5`. The inversion is
//! done in the tower field
//!
//! ```text
//! GF(2²) = GF(2)[W]/(W² + W + 1)
//! GF(2⁴) = GF(2²)[Z]/(Z² + Z + N),   N = W²
//! GF(2⁸) = GF(2⁴)[Y]/(Y² + Y + ν),   ν = W·Z
//! ```
//!
//! (polynomial bases, 8-bit tower element `a1·Y + a0`), reached by the field
//! isomorphism that sends the SM4 generator to `β = 0xC7`, a root of `0x1F5`
//! in the tower field. With `Δ = a1²ν + a1·a0 + a0²` (in GF(2⁴)),
//! `(a1·Y + a0)⁻¹ = (a1·Y + a0 + a1)·Δ⁻¹`, and `Δ⁻¹` is the same formula one
//! level down, where GF(2²) inversion is squaring (linear). Every
//! multiplication is Karatsuba on the subfield halves, and
//! `(a0 + a1)·Δ⁻¹ = a0·Δ⁻¹ + a1·Δ⁻¹` reuses the operand sums of `a0`. So the
//! circuit is a linear layer (22 linear forms of the input), 36 ANDs
//! interleaved with small linear layers, and a linear layer from the last 18
//! products to the output. The linear layers (which also carry `A` and the
//! isomorphism, both ways) were reduced by common-subexpression search —
//! Boyar–Peralta's distance heuristic for the input layer, greedy pair
//! elimination for the rest: 90 XORs and 36 ANDs in all.
//!
//! The two constants are not in the circuit: [`sbox`] computes
//! `S(x ⊕ K0) ⊕ c` with `K0 = A⁻¹·c =` [`K0`], so callers fold `K0` into the
//! round key and `c` into the state (see [`super`]). The test
//! `sbox_circuit_matches_table` checks all 256 inputs against GB/T 32907.

use core::ops::{BitAnd, BitXor};

/// The S-box input offset `A⁻¹·c` absorbed by callers (see the module docs).
pub(crate) const K0: u8 = 0x75;

/// The S-box output constant `c`, likewise absorbed by callers.
pub(crate) const C: u8 = 0xD3;

/// A word of bits processed in parallel: bit `k` of every argument belongs to
/// S-box instance `k`. Only XOR and AND are used, so a zero bit position stays
/// zero (callers packing fewer instances rely on that).
pub(crate) trait Lane: Copy + BitXor<Output = Self> + BitAnd<Output = Self> {}

impl<T: Copy + BitXor<Output = T> + BitAnd<Output = T>> Lane for T {}

/// `S(x ⊕ K0) ⊕ c` on bit planes: `x[i]` holds bit `i` (LSB = 0) of every
/// instance's input byte, and so does the result for the output byte.
/// Straight-line code: no branch or memory access depends on the data.
#[inline(always)]
pub(crate) fn sbox<L: Lane>(x: [L; 8]) -> [L; 8] {
    // 104 XOR + 36 AND; k0 = 0x75; N=2 nu=12 beta=134
    // 90 XOR + 36 AND; k0 = 0x75; N=3 nu=8 beta=199
    let [x0, x1, x2, x3, x4, x5, x6, x7] = x;
    // Top linear layer: the halves a1, a0 of the tower-field input with
    // their Karatsuba operand sums, and a1²ν + a0².
    let t0 = x2 ^ x6;
    let t1 = x1 ^ x4;
    let t2 = x0 ^ t1;
    let t3 = x3 ^ t2;
    let t4 = x5 ^ t0;
    let t5 = t3 ^ t4;
    let t6 = x4 ^ t5;
    let t7 = x7 ^ t3;
    let t8 = x1 ^ t0;
    let t9 = x2 ^ x7;
    let t10 = t0 ^ t2;
    let t11 = t6 ^ t7;
    let t12 = x1 ^ t11;
    let t13 = x2 ^ t2;
    let t14 = t5 ^ t9;
    let t15 = x3 ^ t6;
    let t16 = x6 ^ t5;
    let t17 = t0 ^ t6;
    let t18 = t7 ^ t8;
    let t19 = t9 ^ t10;
    let t20 = t13 ^ t14;
    let t21 = x0 ^ x3;
    let t22 = t16 ^ t21;
    // a1 · a0 in GF(2⁴): nine bit products.
    let t23 = t5 & t11;
    let t24 = t14 & t6;
    let t25 = t9 & t7;
    let t26 = x6 & t12;
    let t27 = t13 & t17;
    let t28 = t10 & t18;
    let t29 = t16 & x1;
    let t30 = t20 & t0;
    let t31 = t19 & t8;
    // Δ = a1²ν + a1·a0 + a0².
    let t32 = t23 ^ t27;
    let t33 = t27 ^ t30;
    let t34 = t25 ^ t26;
    let t35 = t22 ^ t32;
    let t36 = t34 ^ t35;
    let t37 = t24 ^ t28;
    let t38 = t1 ^ t32;
    let t39 = t37 ^ t38;
    let t40 = t26 ^ t29;
    let t41 = x5 ^ t33;
    let t42 = t40 ^ t41;
    let t43 = t28 ^ t31;
    let t44 = t15 ^ t33;
    let t45 = t43 ^ t44;
    // Δ⁻¹ in GF(2⁴) through GF(2²), where inversion is squaring.
    let t46 = t36 ^ t39;
    let t47 = t42 ^ t45;
    let t48 = t36 ^ t42;
    let t49 = t42 ^ t46;
    let t50 = t39 ^ t45;
    let t51 = t39 ^ t47;
    let t52 = t46 ^ t47;
    let t53 = t45 & t39;
    let t54 = t42 & t36;
    let t55 = t47 & t46;
    let t56 = t54 ^ t55;
    let t57 = t51 ^ t56;
    let t58 = t53 ^ t54;
    let t59 = t49 ^ t58;
    let t60 = t57 ^ t59;
    let t61 = t45 & t57;
    let t62 = t42 & t60;
    let t63 = t47 & t59;
    let t64 = t50 & t57;
    let t65 = t48 & t60;
    let t66 = t52 & t59;
    // Karatsuba operand sums of Δ⁻¹.
    let t67 = t61 ^ t62;
    let t68 = t61 ^ t63;
    let t69 = t62 ^ t63;
    let t70 = t64 ^ t65;
    let t71 = t64 ^ t66;
    let t72 = t65 ^ t66;
    let t73 = t67 ^ t70;
    let t74 = t68 ^ t71;
    let t75 = t69 ^ t72;
    // a1·Δ⁻¹ and a0·Δ⁻¹: eighteen bit products.
    let t76 = t5 & t69;
    let t77 = t14 & t67;
    let t78 = t9 & t68;
    let t79 = x6 & t72;
    let t80 = t13 & t70;
    let t81 = t10 & t71;
    let t82 = t16 & t75;
    let t83 = t20 & t73;
    let t84 = t19 & t74;
    let t85 = t11 & t69;
    let t86 = t6 & t67;
    let t87 = t7 & t68;
    let t88 = t12 & t72;
    let t89 = t17 & t70;
    let t90 = t18 & t71;
    let t91 = x1 & t75;
    let t92 = t0 & t73;
    let t93 = t8 & t74;
    // Bottom linear layer: a1·Δ⁻¹·Y + (a0 + a1)·Δ⁻¹, back to the SM4
    // field, then A.
    let t94 = t79 ^ t84;
    let t95 = t86 ^ t93;
    let t96 = t78 ^ t83;
    let t97 = t80 ^ t94;
    let t98 = t77 ^ t97;
    let t99 = t87 ^ t88;
    let t100 = t76 ^ t95;
    let t101 = t85 ^ t92;
    let t102 = t96 ^ t98;
    let t103 = t91 ^ t100;
    let t104 = t90 ^ t99;
    let t105 = t86 ^ t104;
    let t106 = t82 ^ t103;
    let t107 = t85 ^ t96;
    let t108 = t89 ^ t107;
    let t109 = t80 ^ t100;
    let t110 = t76 ^ t81;
    let t111 = t87 ^ t106;
    let t112 = t95 ^ t102;
    let t113 = t99 ^ t108;
    let t114 = t98 ^ t111;
    let t115 = t78 ^ t101;
    let t116 = t87 ^ t91;
    let t117 = t109 ^ t115;
    let t118 = t88 ^ t106;
    let t119 = t94 ^ t113;
    let t120 = t102 ^ t105;
    let t121 = t101 ^ t116;
    let t122 = t108 ^ t118;
    let t123 = t79 ^ t117;
    let t124 = t110 ^ t119;
    let t125 = t101 ^ t112;
    [t114, t120, t122, t105, t125, t123, t124, t121]
}
