# capsem — Nix flake: pinned nixpkgs, the Rust toolchain and the kernel source, wrapping the
# same cargo/xtask code the README uses. Nothing here re-implements the build: `nix build
# .#capsem-builder` compiles the builder, `nix run .#image` runs `cargo xtask image build`
# with every host tool on PATH, and `nix develop` gives the same tools to a shell.
#
# The nixpkgs input is pinned to a commit of the nixos-25.05 branch. Our development
# machines cannot reach nixpkgs, so this flake is only parse-checked in CI
# (`nix-instantiate --parse flake.nix`) and flake.lock is created by the first
# `nix flake lock` on a machine that can (see README.md, "Nix").
{
  description = "capsem: reproducible, signed micro-VM images for sandboxed AI agents";

  inputs = {
    # nixos-25.05 as of 2025-07-29.
    nixpkgs.url = "github:NixOS/nixpkgs/1f08a4df998e21f4e8be8fb6fbf61d11a1a5076a";
  };

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Host tools the build and the tests call (the same list xtask/src/deps.rs installs
      # from Debian).
      hostTools = pkgs: with pkgs; [
        docker-client
        mmdebstrap
        squashfsTools
        b3sum
        minisign
        qemu
        cargo-nextest
      ];
    in
    {
      packages = forAll (pkgs: rec {
        capsem-builder = pkgs.rustPlatform.buildRustPackage {
          pname = "capsem-builder";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "-p" "capsem-builder" ];
          # The tests need a container engine and network-free fixtures; run them with
          # `cargo xtask ci` instead of inside the Nix sandbox.
          doCheck = false;
        };

        # nixpkgs' Linux 6.1 source at the pinned revision, for kernel work in a Nix shell. The
        # builder does not use it: it builds from kernel/linux-6.1.toml, whose `upstream`
        # provider pins 6.1.159 by the sha256 nixpkgs records for that release.
        kernel-source = pkgs.linux_6_1.src;

        # `nix run .#image` builds images/default exactly like `cargo xtask image build`.
        image = pkgs.writeShellApplication {
          name = "capsem-image-build";
          runtimeInputs = [ pkgs.cargo pkgs.rustc pkgs.gcc ] ++ hostTools pkgs;
          text = ''
            exec cargo xtask image build "$@"
          '';
        };

        default = capsem-builder;
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt rust-analyzer gcc pkg-config nix ] ++ hostTools pkgs;
          RUST_BACKTRACE = "1";
        };
      });
    };
}
