# Two nodes, each with the cluster's file system mounted by services.pando.mount (pando-mount.service, `pando mount`):
# a file written through one machine's mount is read through the other's, both ways. node1, the founder, mounts
# with its own admin ticket (mount.ticketFile = null); node2 joins and mounts with an fs token minted on node1.
{
  pkgs,
  module,
  package,
}:

let
  common = {
    imports = [ (import ./member.nix { inherit module package; }) ];
    services.pando.mount.enable = true;
  };
in
pkgs.testers.runNixOSTest {
  name = "pando-mount";

  nodes = {
    node1 = common;

    # Started by the test once it has written the join ticket and the mount's ticket (LoadCredential needs them).
    node2 =
      { lib, ... }:
      {
        imports = [ common ];
        services.pando = {
          joinTokenFile = "/run/pando-join";
          mount = {
            ticketFile = "/run/pando-mount-ticket";
            allowOther = true;
          };
        };
        systemd.services.pando.wantedBy = lib.mkForce [ ];
        systemd.services.pando-mount.wantedBy = lib.mkForce [ ];
      };
  };

  testScript = ''
    import json
    import time

    ADMIN = "PANDO_TICKET=$(cat /var/lib/pando/ticket)"


    def install_secret(machine, text, path):
        machine.succeed(f"printf '%s' '{text}' | install -m 600 /dev/stdin {path}")


    def two_voters():
        rc, out = node1.execute(f"{ADMIN} pando cluster status --json")
        if rc != 0:
            return False
        status = json.loads(out)
        return status["leader_id"] is not None and sum(1 for m in status["members"] if m["voter"]) == 2


    with subtest("node1 founds the cluster and mounts it"):
        node1.start()
        node1.wait_for_unit("pando.service")
        node1.wait_for_unit("pando-mount.service")
        node1.wait_until_succeeds("mountpoint -q /mnt/pando")

    with subtest("node2 joins, then mounts with an fs token"):
        node2.start()
        node2.wait_for_unit("multi-user.target")
        join = node1.succeed(f"{ADMIN} pando cluster join-token create --as voter --ttl 10m").strip()
        install_secret(node2, join, "/run/pando-join")
        node2.succeed("systemctl start pando.service")
        deadline = time.monotonic() + 180
        while not two_voters():
            assert time.monotonic() < deadline, "node2 did not become a voter"
            time.sleep(1)
        ticket = node1.succeed(f"{ADMIN} pando token create --fs write --name vm-mount --ttl 1h").strip()
        install_secret(node2, ticket, "/run/pando-mount-ticket")
        node2.succeed("systemctl start pando-mount.service")
        node2.wait_until_succeeds("mountpoint -q /mnt/pando")

    with subtest("a file written through node1's mount reads through node2's"):
        node1.succeed("echo hello-from-node1 > /mnt/pando/greeting.txt")
        node2.wait_until_succeeds("grep -qx hello-from-node1 /mnt/pando/greeting.txt", timeout=60)

    with subtest("and the other way round, in a new directory"):
        node2.succeed("mkdir /mnt/pando/replies && echo hello-from-node2 > /mnt/pando/replies/node2.txt")
        node1.wait_until_succeeds("grep -qx hello-from-node2 /mnt/pando/replies/node2.txt", timeout=60)

    with subtest("allowOther: another user reads through node2's mount"):
        text = node2.succeed("runuser -u nobody -- cat /mnt/pando/greeting.txt").strip()
        assert text == "hello-from-node1", f"nobody read {text!r}"

    with subtest("stopping the mount unmounts it"):
        node2.succeed("systemctl stop pando-mount.service")
        node2.fail("mountpoint -q /mnt/pando")
        node1.succeed("grep -qx hello-from-node2 /mnt/pando/replies/node2.txt")
  '';
}
