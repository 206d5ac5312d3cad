//! virtio-blk tests: a driver in guest memory sends requests as Linux would.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::*;
use crate::devices::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::testutil::{BUF_BASE, CountingIrq, Driver, guest_mem};

const HDR: u64 = BUF_BASE;
const DATA: u64 = BUF_BASE + 0x1000;
const STATUS: u64 = BUF_BASE + 0x3000;

fn disk(sectors: u64) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE).map(|i| (i / SECTOR_SIZE) as u8).collect();
    f.write_all(&bytes).unwrap();
    f
}

fn setup(file: std::fs::File, ro: bool) -> (MmioTransport, Driver) {
    let mem = guest_mem();
    let dev = Block::new(file, ro, "capsem-test-disk-id-long".into()).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), Arc::new(CountingIrq::default()));
    let d = Driver::init(&mut t, mem, 1, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO);
    (t, d)
}

/// Sends one request: header, then `data` descriptors, then the status byte.
fn request(t: &mut MmioTransport, d: &mut Driver, ty: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&ty.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes());
    hdr.extend_from_slice(&sector.to_le_bytes());
    d.write(HDR, &hdr);
    d.write(STATUS, &[0xff]);
    let mut chain = vec![(HDR, 16, false)];
    chain.extend_from_slice(data);
    chain.push((STATUS, 1, true));
    let head = d.push(0, &chain);
    d.notify(t, 0);
    let used = d.used(0);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, u32::from(head));
    (d.read(STATUS, 1)[0], used[0].1)
}

#[test]
fn config_reports_capacity_in_sectors() {
    let (mut t, _) = setup(disk(8), true);
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
}

#[test]
fn read_scatters_sectors_into_guest_buffers() {
    let (mut t, mut d) = setup(disk(8), true);
    // Two data descriptors: 512 + 1024 bytes starting at sector 2.
    let (st, len) = request(&mut t, &mut d, VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true), (DATA + 0x800, 1024, true)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(len, 512 + 1024 + 1);
    assert!(d.read(DATA, 512).iter().all(|&b| b == 2));
    let second = d.read(DATA + 0x800, 1024);
    assert!(second[..512].iter().all(|&b| b == 3));
    assert!(second[512..].iter().all(|&b| b == 4));
}

#[test]
fn write_reaches_the_file_and_flush_succeeds() {
    let mut f = disk(8);
    let (mut t, mut d) = setup(f.try_clone().unwrap(), false);
    d.write(DATA, &[0xab; 512]);
    let (st, len) = request(&mut t, &mut d, VIRTIO_BLK_T_OUT, 5, &[(DATA, 512, false)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1));
    let mut back = vec![0u8; 512];
    f.seek(SeekFrom::Start(5 * SECTOR_SIZE)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0xab));
    let (st, _) = request(&mut t, &mut d, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

#[test]
fn write_to_read_only_disk_fails_with_ioerr_and_leaves_file_intact() {
    let mut f = disk(8);
    let (mut t, mut d) = setup(f.try_clone().unwrap(), true);
    d.write(DATA, &[0xcd; 512]);
    let (st, len) = request(&mut t, &mut d, VIRTIO_BLK_T_OUT, 1, &[(DATA, 512, false)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_IOERR, 1));
    let mut back = vec![0u8; 512];
    f.seek(SeekFrom::Start(SECTOR_SIZE)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == 1), "file unchanged");
}

#[test]
fn read_only_flag_is_offered() {
    let (t, _) = setup(disk(1), true);
    assert_ne!(t.device().avail_features() & VIRTIO_BLK_F_RO, 0);
    let (t, _) = setup(disk(1), false);
    assert_eq!(t.device().avail_features() & VIRTIO_BLK_F_RO, 0);
}

#[test]
fn out_of_range_requests_fail_with_ioerr() {
    let (mut t, mut d) = setup(disk(8), false);
    let (st, _) = request(&mut t, &mut d, VIRTIO_BLK_T_IN, 7, &[(DATA, 1024, true)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR, "crosses the end");
    let (st, _) = request(&mut t, &mut d, VIRTIO_BLK_T_IN, u64::MAX / 256, &[(DATA, 512, true)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR, "offset overflows");
    let (st, _) = request(&mut t, &mut d, VIRTIO_BLK_T_OUT, 8, &[(DATA, 512, false)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    // A data buffer outside guest RAM is an error too, not a crash.
    let (st, _) = request(&mut t, &mut d, VIRTIO_BLK_T_IN, 0, &[(0xf000_0000, 512, true)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
}

#[test]
fn get_id_and_unsupported_types() {
    let (mut t, mut d) = setup(disk(1), true);
    let (st, len) = request(&mut t, &mut d, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(&d.read(DATA, 20)[..], b"capsem-test-disk-id-");
    let (st, _) = request(&mut t, &mut d, 99, 0, &[]);
    assert_eq!(st, VIRTIO_BLK_S_UNSUPP);
}
