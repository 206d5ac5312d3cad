//! A minimal i8042 keyboard controller: only what Linux uses to reset the machine.
//!
//! Owns ports 0x60–0x64. Writing command 0xFE (pulse reset line) to port 0x64 requests a VM reset;
//! everything else reads as "no data".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::BusDevice;

/// First port of the window.
pub const I8042_BASE: u64 = 0x60;
/// Window length (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
const CMD_RESET: u8 = 0xfe;

/// The controller; `reset` is set when the guest pulses the reset line.
#[derive(Debug)]
pub struct I8042 {
    reset: Arc<AtomicBool>,
}

impl I8042 {
    /// A controller that flips `reset` on a reset request.
    pub fn new(reset: Arc<AtomicBool>) -> Self {
        I8042 { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data.first() == Some(&CMD_RESET) {
            self.reset.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_sets_the_flag_and_nothing_else_does() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut d = I8042::new(flag.clone());
        d.write(0, &[CMD_RESET]);
        d.write(4, &[0xaa]);
        assert!(!flag.load(Ordering::SeqCst));
        d.write(4, &[CMD_RESET]);
        assert!(flag.load(Ordering::SeqCst));
    }
}
