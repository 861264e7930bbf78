# The Pando package: `pando-node` (the node) and `pando` (the CLI), with the CLI's shell completions.
#
# Toolchain: the workspace says `rust-version = "1.95"` (Cargo.toml, and rust-toolchain.toml pins 1.95.0 for rustup
# users). nixpkgs' own rustPlatform is used here; on a nixpkgs whose rustc is older the package is marked broken (a
# clear refusal instead of a compile error deep in the build). Then follow nixos-unstable, or pass a rustPlatform
# made from a newer toolchain, and that toolchain's rustc for the version check:
# `pando.override { rustPlatform = makeRustPlatform { inherit cargo rustc; }; inherit rustc; }`.
{
  lib,
  stdenv,
  rustPlatform,
  rustc,
  installShellFiles,
  pkg-config,
  fuse3,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
  rustVersion = cargoToml.workspace.package.rust-version;
in
rustPlatform.buildRustPackage {
  pname = "pando";
  inherit (cargoToml.workspace.package) version;

  # Only what cargo needs: the workspace manifest and lock, every member (cargo loads all of a workspace's manifests
  # even when it builds two packages) and vendor/, the patched ractor, ractor_cluster and openraft of
  # `[patch.crates-io]`.
  # Leaves out target/, data/, bench/ and the rest, so a local build or a benchmark run does not change the hash.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../protocol
      ../actors
      ../node
      ../cli
      ../fixtures
      ../plugins-sdk
      ../vendor
    ];
  };

  # Every dependency comes from crates.io (checksums in Cargo.lock); the two `[patch.crates-io]` crates are path
  # dependencies under vendor/, which have no `source` in the lock file and are built from src, so no outputHashes.
  cargoLock.lockFile = ../Cargo.lock;

  # Only the two binaries: the fixtures (test harness) and the plugin SDK are not installed.
  cargoBuildFlags = [
    "--package"
    "pando-node"
    "--package"
    "pando-cli"
  ];

  nativeBuildInputs = [
    installShellFiles
    pkg-config
  ];

  # fuser is built without libfuse (pure Rust), so nothing links against fuse3; it is here for fusermount3, which
  # a mount by a non-root user needs, and for the record of what the FUSE support runs against.
  buildInputs = [ fuse3 ];

  # The tests run in CI (.ci/run) and in this flake's NixOS VM tests, not in the sandbox: they start real node
  # processes talking QUIC over loopback networking, and the FUSE tests need /dev/fuse, neither of which the Nix build
  # sandbox provides.
  doCheck = false;

  # `pando completions <shell>` prints the completion script of that shell on stdout.
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd pando \
      --bash <($out/bin/pando completions bash) \
      --zsh <($out/bin/pando completions zsh) \
      --fish <($out/bin/pando completions fish)
  '';

  meta = {
    description = "Raft-replicated key-value store node (pando-node) and its command line (pando)";
    homepage = cargoToml.workspace.package.repository;
    license = with lib.licenses; [
      asl20
      mit
    ];
    mainProgram = "pando";
    platforms = lib.platforms.linux;
    # rust-version = "1.95" in Cargo.toml: an older rustc cannot build the workspace (edition 2024, newer std APIs).
    broken = lib.versionOlder rustc.version rustVersion;
  };
}
