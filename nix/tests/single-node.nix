# One node from the NixOS module: it founds a cluster, serves the CLI with the admin ticket it wrote, keeps its data
# across a restart, and runs as the sandboxed `pando` user.
{
  pkgs,
  module,
  package,
}:

pkgs.testers.runNixOSTest {
  name = "pando-single-node";

  nodes.machine = {
    imports = [ (import ./member.nix { inherit module package; }) ];
    services.pando = {
      # Exercises --config: a TOML file of long flag names.
      settings = {
        snapshot-every = 1000;
        job-workers = 2;
      };
      logFilter = "info,openraft=warn";
    };
  };

  testScript = ''
    import json

    ADMIN = "PANDO_TICKET=$(cat /var/lib/pando/ticket)"

    machine.start()
    machine.wait_for_unit("pando.service")
    machine.wait_until_succeeds("test -s /var/lib/pando/ticket")

    with subtest("the node runs sandboxed as its own user"):
        assert machine.succeed("systemctl show -p User --value pando").strip() == "pando"
        assert machine.succeed("stat -c %U:%a /var/lib/pando/ticket").strip() == "pando:600"
        assert "--config" in machine.succeed("systemctl show -p ExecStart --value pando")

    with subtest("set and get through the CLI"):
        machine.succeed(f"{ADMIN} pando kv set greeting hello")
        value = machine.succeed(f"{ADMIN} pando kv get greeting").strip()
        assert value == "hello", f"kv get greeting answered {value!r}"

    with subtest("the data survives a restart"):
        machine.systemctl("restart pando")
        machine.wait_for_unit("pando.service")
        value = machine.wait_until_succeeds(f"{ADMIN} pando kv get greeting").strip()
        assert value == "hello", f"after a restart kv get greeting answered {value!r}"

    with subtest("the cluster status names one voter, the leader"):
        status = json.loads(machine.succeed(f"{ADMIN} pando cluster status --json"))
        voters = [member for member in status["members"] if member["voter"]]
        assert len(voters) == 1 and status["leader_id"] == voters[0]["node_id"], status

    with subtest("shell completions are installed"):
        machine.succeed("test -s ${package}/share/bash-completion/completions/pando.bash")
        machine.succeed("test -s ${package}/share/zsh/site-functions/_pando")
        machine.succeed("test -s ${package}/share/fish/vendor_completions.d/pando.fish")
  '';
}
