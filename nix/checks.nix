# `nix flake check`: the package, clippy, rustfmt, the test suite, cfn-lint, shellcheck and the NixOS VM test.
# Clippy and the tests use the package's own crane instance and dependency build (the static musl target),
# so what is checked is what ships.
{
  pkgs,
  s3backup,
  testServers,
}:
let
  inherit (s3backup.passthru) craneLib commonArgs cargoArtifacts testSrc;
  inherit (pkgs) lib;
in
{
  inherit s3backup;

  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    }
  );

  fmt = craneLib.cargoFmt { inherit (commonArgs) src; };

  # The suite runs through tests/run, the project's test command, which starts the S3 servers on 127.0.0.1
  # (the build sandbox has loopback) and hands their endpoints to the tests; extra arguments go to
  # `cargo nextest run`. S3BACKUP_TOOLS_FROM_PATH=1 has scripts/tools.sh take `weed` and `moto_server`
  # from PATH (nixpkgs') instead of its PyPI venv, which the sandbox could not install.
  nextest = craneLib.cargoNextest (
    commonArgs
    // {
      inherit cargoArtifacts;
      src = testSrc;
      nativeCheckInputs = testServers ++ [ pkgs.python3 ];
      env.S3BACKUP_TOOLS_FROM_PATH = "1";
      # The cron scenario (tests/e2e.rs) needs /usr/bin/env, logger and su, which the build sandbox lacks:
      # the VM test runs the same tests/e2e/scenario.sh instead.
      checkPhase = ''
        runHook preCheck
        bash tests/run ''${CARGO_PROFILE:+--cargo-profile "$CARGO_PROFILE"} --no-tests=fail -E 'not binary(e2e)'
        runHook postCheck
      '';
    }
  );

  cfn-lint =
    pkgs.runCommand "s3backup-cfn-lint"
      {
        nativeBuildInputs = [ pkgs.python3Packages.cfn-lint ];
        src = lib.fileset.toSource {
          root = ../.;
          fileset = lib.fileset.unions [
            ../cfn
            (lib.fileset.maybeMissing ../.cfnlintrc)
            (lib.fileset.maybeMissing ../.cfnlintrc.yaml)
          ];
        };
      }
      # The deployable templates, cfn/*: cfn/tests/ holds deliberately weak negative test data.
      ''
        cd "$src"
        templates=$(find cfn -maxdepth 1 -type f -exec grep -lE '^AWSTemplateFormatVersion|"AWSTemplateFormatVersion"' {} + | sort || true)
        if [ -z "$templates" ]; then
          echo "no CloudFormation template (a file with AWSTemplateFormatVersion) in cfn/" >&2
          exit 1
        fi
        echo "cfn-lint on:" $templates
        cfn-lint -- $templates
        touch "$out"
      '';

  shellcheck =
    pkgs.runCommand "s3backup-shellcheck" { nativeBuildInputs = [ pkgs.shellcheck ]; }
      ''
        shellcheck ${../tests/e2e}/*.sh ${./check.sh}
        touch "$out"
      '';

  vm-test = import ./vm-test.nix { inherit pkgs s3backup; };
}
