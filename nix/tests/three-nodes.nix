# Three machines on the test network: node1 founds the cluster, node2 and node3 join it as voters with join tickets
# minted on node1 (handed to their services through services.pando.joinTokenFile). A writer loop runs while the
# leader is killed with SIGKILL: writes go on through the new leader, and every acknowledged write is readable
# afterwards.
{
  pkgs,
  module,
  package,
}:

let
  common = import ./member.nix { inherit module package; };

  # node2 and node3: the test writes the join ticket, then starts the service (LoadCredential needs the file).
  joiner =
    { lib, ... }:
    {
      imports = [ common ];
      services.pando.joinTokenFile = "/run/pando-join";
      systemd.services.pando.wantedBy = lib.mkForce [ ];
    };

  # Writes w/1, w/2, ... (each key once) until /tmp/stop-writer exists, and appends the number of every acknowledged
  # write to /tmp/acked. A write that failed may still have been applied: only the acknowledged ones must be there.
  # Shell builtins only besides pando (a transient unit's PATH is bare).
  writer = pkgs.writeShellScript "pando-writer" ''
    PANDO_TICKET="$(< /root/admin.ticket)"
    export PANDO_TICKET
    i=0
    while [ ! -e /tmp/stop-writer ]; do
      i=$((i + 1))
      if ${package}/bin/pando --timeout-ms 5000 kv set "w/$i" "v$i" > /dev/null 2>> /tmp/writer.err; then
        echo "$i" >> /tmp/acked
      fi
    done
  '';
in
pkgs.testers.runNixOSTest {
  name = "pando-three-nodes";

  nodes = {
    node1 = common;
    node2 = joiner;
    node3 = joiner;
  };

  testScript =
    { nodes, ... }:
    ''
      import json
      import time

      ADMIN = "PANDO_TICKET=$(cat /root/admin.ticket)"
      machines = [node1, node2, node3]
      by_ip = {
          "${nodes.node1.networking.primaryIPAddress}": node1,
          "${nodes.node2.networking.primaryIPAddress}": node2,
          "${nodes.node3.networking.primaryIPAddress}": node3,
      }


      def wait_for(what, check, timeout=180):
          deadline = time.monotonic() + timeout
          while True:
              result = check()
              if result:
                  return result
              if time.monotonic() > deadline:
                  raise Exception(f"timed out after {timeout} s waiting for {what}")
              time.sleep(1)


      def cluster_status(machine):
          """The cluster status through `machine`'s admin ticket, or None while no node answers."""
          rc, out = machine.execute(f"{ADMIN} pando cluster status --json")
          return json.loads(out) if rc == 0 else None


      def voters(machine, count):
          status = cluster_status(machine)
          return (
              status is not None
              and status["leader_id"] is not None
              and sum(1 for member in status["members"] if member["voter"]) == count
          )


      def leader(machine):
          """The machine whose node leads, as `machine` sees the cluster; None while there is no leader."""
          status = cluster_status(machine)
          if status is None or status["leader_id"] is None:
              return None
          for member in status["members"]:
              if member["node_id"] == status["leader_id"]:
                  return by_ip[member["addrs"][0].rsplit(":", 1)[0]]
          return None


      def install_secret(machine, text, path):
          machine.succeed(f"printf '%s' '{text}' | install -m 600 /dev/stdin {path}")


      def acked(machine):
          return int(machine.succeed("if [ -e /tmp/acked ]; then wc -l < /tmp/acked; else echo 0; fi").strip())


      with subtest("node1 founds the cluster"):
          node1.start()
          node1.wait_for_unit("pando.service")
          node1.succeed("install -m 600 /var/lib/pando/ticket /root/admin.ticket")
          wait_for("node1 to lead", lambda: voters(node1, 1))

      with subtest("node2 and node3 join as voters"):
          node2.start()
          node3.start()
          for count, joiner in ((2, node2), (3, node3)):
              joiner.wait_for_unit("multi-user.target")
              join = node1.succeed(f"{ADMIN} pando cluster join-token create --as voter --ttl 10m").strip()
              install_secret(joiner, join, "/run/pando-join")
              joiner.succeed("systemctl start pando.service")
              wait_for(f"{count} voters", lambda: voters(node1, count))

      with subtest("every machine gets an admin ticket naming all three members"):
          ticket = node1.succeed(f"{ADMIN} pando token create --admin --name vm-test --ttl 1h").strip()
          for machine in machines:
              install_secret(machine, ticket, "/root/admin.ticket")
          for machine in machines:
              assert voters(machine, 3), f"{machine.name} does not see three voters"

      with subtest("writes go on through a SIGKILL of the leader"):
          first_leader = wait_for("a leader", lambda: leader(node1))
          writer_machine = next(machine for machine in machines if machine is not first_leader)
          writer_machine.succeed("rm -f /tmp/acked /tmp/stop-writer && systemd-run --unit=pando-writer ${writer}")
          wait_for("50 writes before the crash", lambda: acked(writer_machine) >= 50)

          victim = wait_for("a leader", lambda: leader(writer_machine))
          before = acked(writer_machine)
          victim.succeed("systemctl kill -s KILL pando.service")
          wait_for("50 more writes after the crash", lambda: acked(writer_machine) >= before + 50, timeout=120)
          writer_machine.succeed("touch /tmp/stop-writer")
          writer_machine.wait_until_fails("systemctl is-active --quiet pando-writer.service")

      with subtest("the killed node comes back and the cluster has three voters"):
          victim.wait_until_succeeds("test $(systemctl show -p NRestarts --value pando.service) -ge 1")
          victim.wait_for_unit("pando.service")
          wait_for("3 voters after the restart", lambda: voters(writer_machine, 3))

      with subtest("every acknowledged write is readable"):
          numbers = writer_machine.succeed("cat /tmp/acked").split()
          assert len(numbers) >= 100, f"only {len(numbers)} acknowledged writes"
          found: dict[str, str] = {}
          after = ""
          while True:
              page = json.loads(writer_machine.succeed(f"{ADMIN} pando kv scan w/ --limit 1000 --json {after}"))
              for entry in page["entries"]:
                  found[entry["key"]] = entry["value"]
              if not page["next"]:
                  break
              after = f"--after {page['next']}"
          lost = [n for n in numbers if found.get(f"w/{n}") != f"v{n}"]
          assert not lost, f"{len(lost)} acknowledged writes missing or wrong, first {lost[:10]}"
          print(f"{len(numbers)} acknowledged writes, all readable; {len(found)} keys in all")
    '';
}
