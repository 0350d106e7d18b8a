//! [`Sm4`]: the constant-time SM4 as a RustCrypto block cipher, so that
//! `aes_gcm::AesGcm<Sm4, U12>` is SM4-GCM without the table-based `sm4` crate.

use core::fmt;

// The `cipher` traits as re-exported by `aes` (the same `cipher` release
// `aes-gcm` is built on), so no extra dependency is needed.
use aes::cipher::consts::{U16, U64};
use aes::cipher::{
    AlgorithmName, Block, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt,
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut, Key,
    KeyInit, KeySizeUser, ParBlocks, ParBlocksSizeUser,
};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{crypt_blocks, decrypt_block, encrypt_block, expand_key, sliced_keys};

/// The SM4 block cipher (GB/T 32907-2016) without secret-dependent table
/// look-ups or branches: single blocks through the S-box circuit, runs of 64
/// blocks (the "parallel blocks" of CTR and GCM) bitsliced. Round keys are
/// zeroized on drop.
#[derive(Clone)]
pub struct Sm4 {
    rk: [u32; 32],
}

impl KeySizeUser for Sm4 {
    type KeySize = U16;
}

impl KeyInit for Sm4 {
    fn new(key: &Key<Self>) -> Self {
        let mut k: [u8; 16] = (*key).into();
        let rk = expand_key(&k);
        k.zeroize();
        Sm4 { rk }
    }
}

impl BlockSizeUser for Sm4 {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Sm4 {
    // One bitsliced batch of the `u64`-wide layout.
    type ParBlocksSize = U64;
}

impl BlockCipherEncrypt for Sm4 {
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = Self::BlockSize>) {
        f.call(self)
    }
}

impl BlockCipherDecrypt for Sm4 {
    fn decrypt_with_backend(&self, f: impl BlockCipherDecClosure<BlockSize = Self::BlockSize>) {
        f.call(self)
    }
}

/// Runs `f` on one block copied out of `block`, then writes the result.
fn one(mut block: InOut<'_, '_, Block<Sm4>>, f: impl FnOnce(&mut [u8; 16])) {
    let mut b: [u8; 16] = (*block.get_in()).into();
    f(&mut b);
    *block.get_out() = b.into();
    b.zeroize();
}

/// Runs the bitsliced batch with sliced keys `sk` over 64 blocks.
fn par(mut blocks: InOut<'_, '_, ParBlocks<Sm4>>, mut sk: [u32; 32]) {
    let mut b: [[u8; 16]; 64] = core::array::from_fn(|i| blocks.get_in()[i].into());
    crypt_blocks(&sk, &mut b);
    for (o, v) in blocks.get_out().iter_mut().zip(&b) {
        *o = (*v).into();
    }
    b.zeroize();
    sk.zeroize();
}

impl BlockCipherEncBackend for Sm4 {
    fn encrypt_block(&self, block: InOut<'_, '_, Block<Self>>) {
        one(block, |b| encrypt_block(&self.rk, b));
    }

    fn encrypt_par_blocks(&self, blocks: InOut<'_, '_, ParBlocks<Self>>) {
        par(blocks, sliced_keys(&self.rk));
    }
}

impl BlockCipherDecBackend for Sm4 {
    fn decrypt_block(&self, block: InOut<'_, '_, Block<Self>>) {
        one(block, |b| decrypt_block(&self.rk, b));
    }

    fn decrypt_par_blocks(&self, blocks: InOut<'_, '_, ParBlocks<Self>>) {
        // Decryption is encryption with the round keys reversed.
        let mut rev = self.rk;
        rev.reverse();
        par(blocks, sliced_keys(&rev));
        rev.zeroize();
    }
}

impl AlgorithmName for Sm4 {
    fn write_alg_name(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sm4")
    }
}

impl fmt::Debug for Sm4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print round keys: they are equivalent to the key.
        f.write_str("Sm4 { .. }")
    }
}

impl Drop for Sm4 {
    fn drop(&mut self) {
        self.rk.zeroize();
    }
}

impl ZeroizeOnDrop for Sm4 {}
