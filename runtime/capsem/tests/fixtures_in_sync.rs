//! The test images boot with the shipped image's PID 1 and diagnostics: their copies of
//! `capsem-init` and `capsem-doctor` must not drift from `images/default/artifacts/`.

use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn test_images_carry_the_shipped_init_and_doctor() {
    for file in ["capsem-init", "diagnostics/capsem-doctor"] {
        let shipped = std::fs::read(Path::new(ROOT).join("images/default/artifacts").join(file)).unwrap();
        for image in ["tests/fixtures/vm-image", "builder/tests/fixtures/small-image"] {
            let copy = Path::new(ROOT).join(image).join("artifacts").join(file);
            let bytes = std::fs::read(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
            assert!(bytes == shipped, "{} differs from images/default/artifacts/{file}: copy it over", copy.display());
        }
    }
}
