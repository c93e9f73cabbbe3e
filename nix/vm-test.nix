# The appliance in two VMs. `s3` runs Garage, an S3 server. `appliance` runs the static s3backup binary from
# cron as the backup user, with the cron.d file that the binary itself renders (`s3backup cron-entry`, the
# command the CloudFormation UserData runs too), so the job tested here is the job that ships.
# The assertions are tests/e2e/scenario.sh, the script the local end-to-end test runs.
#   nix build -L .#checks.x86_64-linux.vm-test
{ pkgs, s3backup }:
let
  bucket = "photos";
  backupUser = "user";
  dest = "/srv/backup/photos";
  cronFilePath = "/etc/cron.d/s3backup";
  region = "garage";
  # Test-only credentials, in Garage's formats: a key ID is "GK" and 24 hex digits, a secret 64.
  keyId = "GK3b5d1e0a9c8f7e6d5c4b3a29";
  secret = "5f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
  rpcSecret = "0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9eafb";

  # One source of truth: the binary prints the cron.d file, here as in the CloudFormation UserData (which
  # passes the same flags but --binary, its install path being the default).
  cronFile = pkgs.runCommand "s3backup-cron.d" { } ''
    ${s3backup}/bin/s3backup cron-entry \
      --schedule '30 2 * * *' \
      --user ${backupUser} \
      --bucket ${bucket} \
      --dest ${dest} \
      --region ${region} \
      --binary ${s3backup}/bin/s3backup >"$out"
  '';

  # The photos seeded into the bucket (key = path), and so the tree expected in the destination.
  # awscli uploads the 22 MB one in parts, so its ETag is a multipart one.
  seed = pkgs.runCommand "s3backup-seed" { } ''
    mkdir -p "$out/2024/06" "$out/2024/07" "$out/large" "$out/café"
    seq 1 1000 >"$out/2024/06/img_0001.jpg"
    seq 1 200000 >"$out/2024/06/img_0002.jpg"
    seq 5 5 100000 >"$out/2024/07/beach day.png"
    seq 3 3 30000 >"$out/café/naïve.jpg"
    seq 1 3000000 >"$out/large/panorama.tif"
    : >"$out/empty.jpg"
  '';

  # The bucket after one photo is edited in place (same size, other bytes) and one is added.
  seedEdited = pkgs.runCommand "s3backup-seed-edited" { } ''
    cp -r ${seed} "$out"
    chmod -R u+w "$out"
    seq 1 1000 | tr 0-9 1-90 >"$out/2024/06/img_0001.jpg"
    mkdir -p "$out/2024/08"
    seq 7 7 70000 >"$out/2024/08/new.jpg"
  '';
in
pkgs.testers.runNixOSTest {
  name = "s3backup-appliance";
  globalTimeout = 1200;

  nodes.s3 =
    { pkgs, ... }:
    {
      virtualisation = {
        memorySize = 1024;
        cores = 2;
        # Garage refuses to start with less than 1 GiB free.
        diskSize = 4096;
      };
      services.garage = {
        enable = true;
        package = pkgs.garage_2;
        settings = {
          replication_factor = 1;
          rpc_bind_addr = "[::]:3901";
          rpc_public_addr = "127.0.0.1:3901";
          rpc_secret = rpcSecret;
          s3_api = {
            s3_region = region;
            api_bind_addr = "[::]:3900";
          };
        };
      };
      networking.firewall.allowedTCPPorts = [ 3900 ];
      environment.systemPackages = [ pkgs.awscli2 ];
    };

  nodes.appliance =
    { pkgs, ... }:
    {
      virtualisation = {
        memorySize = 1024;
        cores = 2;
      };
      environment.systemPackages = [ s3backup ];
      users.users.${backupUser} = {
        isNormalUser = true;
        description = "runs the s3backup cron job";
      };

      # NixOS's vixie cron reads /etc/crontab and user crontabs only, not /etc/cron.d (NixOS would have to
      # patch cron for that), so the daemon gets the file through services.cron.cronFiles, which appends it
      # to /etc/crontab (same format: the user field included). /etc/cron.d/s3backup is installed too, as a
      # root-owned 0644 regular file like the one the UserData writes, for the scenario to check and read.
      services.cron = {
        enable = true;
        cronFiles = [ cronFile ];
      };
      environment.etc."cron.d/s3backup" = {
        source = cronFile;
        mode = "0644";
      };

      systemd.tmpfiles.rules = [
        "d /srv/backup 0755 root root -"
        "d ${dest} 0750 ${backupUser} users -"
        # The job pipes into `logger`, found through the cron file's PATH, which names the FHS folders a
        # Debian or Amazon Linux appliance keeps it in; NixOS keeps it elsewhere.
        "L+ /usr/bin/logger - - - - ${pkgs.util-linux}/bin/logger"
      ];
    };

  testScript =
    { nodes, ... }:
    let
      endpoint = "http://${nodes.s3.networking.primaryIPAddress}:3900";
      # The backup user's AWS configuration, for what the cron line does not say: aws-config reads
      # endpoint_url from it. An IP endpoint makes the SDK use path-style requests, which Garage serves
      # without a root domain.
      awsConfig = pkgs.writeText "aws-config" ''
        [default]
        endpoint_url = ${endpoint}
      '';
      awsCredentials = pkgs.writeText "aws-credentials" ''
        [default]
        aws_access_key_id = ${keyId}
        aws_secret_access_key = ${secret}
      '';
      scenario = "S3BACKUP_CRON_FILE=${cronFilePath} BACKUP_USER=${backupUser} DEST=${dest} sh ${../tests/e2e/scenario.sh}";
      # The seeding client. Checksums only where required: not every Garage release takes awscli's
      # default CRC trailers, and the backup must also handle objects uploaded without them.
      aws = "AWS_ACCESS_KEY_ID=${keyId} AWS_SECRET_ACCESS_KEY=${secret} AWS_DEFAULT_REGION=${region} AWS_REQUEST_CHECKSUM_CALCULATION=when_required aws --endpoint-url http://127.0.0.1:3900";
    in
    ''
      start_all()

      with subtest("Garage serves a bucket to a key"):
          s3.wait_for_unit("garage.service")
          s3.wait_for_open_port(3900)
          s3.wait_until_succeeds("garage status")
          node_id = s3.succeed("garage node id -q").strip().split("@")[0]
          s3.succeed(f"garage layout assign -z dc1 -c 1G {node_id}")
          s3.succeed("garage layout apply --version 1")
          s3.succeed("garage key import --yes -n s3backup ${keyId} ${secret}")
          s3.succeed("garage bucket create ${bucket}")
          s3.succeed("garage bucket allow --read --write ${bucket} --key s3backup")

      with subtest("Seed the bucket"):
          s3.succeed("${aws} s3 cp --recursive --no-progress ${seed} s3://${bucket}/")

      with subtest("The cron.d file the binary rendered is in place, and cron has loaded it"):
          appliance.wait_for_unit("cron.service")
          appliance.succeed("${scenario} assert-cron-file")
          cron_d = appliance.succeed("cat ${cronFilePath}")
          crontab = appliance.succeed("cat /etc/crontab")
          assert cron_d in crontab, f"/etc/crontab lacks the cron.d file:\n{crontab}"

      with subtest("The backup user's AWS configuration"):
          appliance.succeed(
              "install -d -m 0700 -o ${backupUser} -g users /home/${backupUser}/.aws",
              "install -m 0600 -o ${backupUser} -g users ${awsConfig} /home/${backupUser}/.aws/config",
              "install -m 0600 -o ${backupUser} -g users ${awsCredentials} /home/${backupUser}/.aws/credentials",
          )

      with subtest("The cron job's command, run as the backup user, backs the bucket up"):
          appliance.succeed("${scenario} run-cron-command")
          appliance.succeed("EXPECTED_DIR=${seed} ${scenario} assert-tree")
          appliance.succeed("test -z \"$(find ${dest} ! -user ${backupUser})\"")

      with subtest("A second run changes nothing"):
          appliance.succeed("EXPECTED_DIR=${seed} ${scenario} assert-noop")

      with subtest("A photo edited in place and a new one are fetched"):
          s3.succeed(
              "${aws} s3 cp --no-progress ${seedEdited}/2024/06/img_0001.jpg s3://${bucket}/2024/06/img_0001.jpg",
              "${aws} s3 cp --no-progress ${seedEdited}/2024/08/new.jpg s3://${bucket}/2024/08/new.jpg",
          )
          appliance.succeed("EXPECTED_DIR=${seedEdited} ${scenario} run-cron-command assert-tree")

      with subtest("The job's output reached the journal through logger"):
          appliance.succeed("test -n \"$(journalctl -q -t s3backup -o cat)\"")
    '';
}
