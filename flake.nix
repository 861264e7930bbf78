{
  description = "Pando: a Raft-replicated key-value store node (pando-node) and its command line (pando)";

  # The workspace needs Rust 1.95 (`rust-version` in Cargo.toml): nixos-unstable's rustc. On an older nixpkgs the
  # package is marked broken (see nix/package.nix).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # The NixOS VM tests, given this flake's module and package.
      vmTests =
        system: pkgs:
        let
          args = {
            inherit pkgs;
            module = self.nixosModules.default;
            package = self.packages.${system}.pando;
          };
        in
        {
          vm-single-node = import ./nix/tests/single-node.nix args;
          vm-three-nodes = import ./nix/tests/three-nodes.nix args;
          vm-plugin = import ./nix/tests/plugin.nix args;
          vm-mount = import ./nix/tests/mount.nix args;
        };
    in
    {
      packages = forAllSystems (
        system: pkgs: {
          pando = pkgs.callPackage ./nix/package.nix { };
          default = self.packages.${system}.pando;
        }
      );

      overlays.default = final: prev: { pando = final.callPackage ./nix/package.nix { }; };

      # `services.pando`; its package defaults to `pkgs.pando` (the overlay above), else nix/package.nix.
      nixosModules.default = ./nix/module.nix;

      devShells = forAllSystems (
        system: pkgs: {
          # For `cargo test --workspace` (what `.ci/run` runs) and `cargo nextest run --workspace`. nixpkgs' rustc has the host's standard library only:
          # rebuilding the wasm plugins (fixtures/plugins/build.sh) needs the wasm32 targets of a rustup toolchain
          # (rust-toolchain.toml); the tests use the committed fixtures/wasm/*.wasm.
          default = pkgs.mkShell {
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              cargo-nextest
              fuse3
              pkg-config
              python3
              util-linux
            ];
            RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
          };
        }
      );

      # `nix flake check`: the package on every system, and the NixOS VM tests on x86_64-linux (they need KVM).
      checks = forAllSystems (
        system: pkgs:
        { pando = self.packages.${system}.pando; }
        // lib.optionalAttrs (system == "x86_64-linux") (vmTests system pkgs)
      );
    };
}
