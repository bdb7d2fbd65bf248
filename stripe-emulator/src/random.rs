//! Random alphanumerics: the variable part of every id and token the emulator makes (objects,
//! events, requests, account links).

use rand::Rng;
use rand::distr::Alphanumeric;

pub fn random_alnum(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}
