# The s3backup binary, built with crane. callPackage it from the package set whose host platform it is
# built for, with a crane instance of that same set; flake.nix does, for the static musl binary:
#   pkgs.pkgsStatic.callPackage ./nix/package.nix { craneLib = crane.mkLib pkgs.pkgsStatic; }
# passthru carries the crane pieces (craneLib, commonArgs, cargoArtifacts, testSrc) that nix/checks.nix
# reuses, so the checks compile against the same dependency build as the package.
{
  lib,
  craneLib,
  buildPackages,
}:
let
  cargoSources = lib.fileset.unions [
    # Cargo.toml, Cargo.lock, every .rs and .toml file
    (craneLib.fileset.commonCargoSources ../.)
    # The appliance scenario the end-to-end test runs
    ../tests/e2e
  ];
  src = lib.fileset.toSource {
    root = ../.;
    fileset = cargoSources;
  };
  # For checks.nextest: the sources and the test command, which starts the S3 servers
  testSrc = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      cargoSources
      ../tests/run
      ../scripts/tools.sh
      ../.ci/requirements.txt
    ];
  };

  commonArgs = {
    inherit src;
    strictDeps = true;
    # SQLite trimmed to what the catalog uses, exactly as a cargo build outside Nix compiles it: the
    # value is read from .cargo/config.toml's [env], its one definition.
    inherit ((lib.importTOML ../.cargo/config.toml).env) LIBSQLITE3_FLAGS;
  };

  # The dependencies alone (including dev-dependencies), built once and shared with the checks.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;
in
craneLib.buildPackage (
  commonArgs
  // {
    inherit cargoArtifacts;

    # The test suite runs in checks.nextest, with the S3 servers it needs.
    doCheck = false;

    # Proves what the package promises: a static binary that runs.
    # (`file` by store path: crane advises against adding packages to nativeBuildInputs, which would
    # change the build's environment from the one the dependencies were built in.)
    doInstallCheck = true;
    installCheckPhase = ''
      runHook preInstallCheck
      kind=$(${buildPackages.file}/bin/file -L "$out/bin/s3backup")
      echo "$kind"
      case $kind in
        *"static-pie linked"* | *"statically linked"*) ;;
        *) echo "s3backup is not a static binary" >&2; exit 1 ;;
      esac
      "$out/bin/s3backup" --help >/dev/null
      runHook postInstallCheck
    '';

    passthru = {
      inherit craneLib commonArgs cargoArtifacts testSrc;
    };

    meta = {
      description = "A verified, atomic, incremental backup of an S3 bucket into a local folder";
      license = [
        lib.licenses.mit
        lib.licenses.asl20
      ];
      mainProgram = "s3backup";
      platforms = lib.platforms.linux;
    };
  }
)
