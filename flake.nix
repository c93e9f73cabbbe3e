{
  description = "s3backup: a verified, atomic, incremental backup of an S3 bucket into a local folder";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
  };

  outputs =
    { nixpkgs, crane, ... }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      # The static x86_64-unknown-linux-musl build: crane cross-compiles with pkgsStatic's musl C
      # toolchain, which also compiles ring's C and assembly.
      s3backup = pkgs.pkgsStatic.callPackage ./nix/package.nix {
        craneLib = crane.mkLib pkgs.pkgsStatic;
      };
      # The S3 servers tests/run starts for the test suite: `weed` and `moto_server`.
      testServers = [
        pkgs.seaweedfs
        (pkgs.python3.withPackages (ps: [ ps.moto ] ++ ps.moto.optional-dependencies.server))
      ];
    in
    {
      packages.${system} = {
        default = s3backup;
        inherit s3backup;
      };

      apps.${system}.default = {
        type = "app";
        program = "${s3backup}/bin/s3backup";
        meta.description = s3backup.meta.description;
      };

      checks.${system} = import ./nix/checks.nix { inherit pkgs s3backup testServers; };

      # A native (glibc) toolchain for day-to-day cargo work, with the test S3 servers and the linters.
      devShells.${system}.default = (crane.mkLib pkgs).devShell {
        # tests/run and scripts/demo then use these `weed` and `moto_server` instead of a PyPI venv.
        S3BACKUP_TOOLS_FROM_PATH = "1";
        packages = testServers ++ [
          pkgs.cargo-nextest
          pkgs.awscli2
          pkgs.python3Packages.cfn-lint
          pkgs.shellcheck
        ];
      };

      formatter.${system} = pkgs.nixfmt-tree;
    };
}
