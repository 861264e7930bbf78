# A plugin on a node from the NixOS module: the committed example plugin fixtures/wasm/echo.wasm (built from
# fixtures/plugins/echo) is installed with a manifest and called. The node's sandbox must let wasmtime compile it
# (MemoryDenyWriteExecute stays off).
{
  pkgs,
  module,
  package,
}:

let
  echoWasm = ../../fixtures/wasm/echo.wasm;
  # What the plugin tests install it with (fixtures/tests/plugins.rs): no permissions, two instances.
  echoManifest = pkgs.writeText "echo.toml" ''
    name = "echo"
    version = "1.0.0"
    instances = 2
  '';
in
pkgs.testers.runNixOSTest {
  name = "pando-plugin";

  nodes.machine =
    { lib, ... }:
    {
      imports = [ (import ./member.nix { inherit module package; }) ];
      # wasmtime compiling the plugin wants more than the other tests' machines.
      virtualisation.memorySize = lib.mkForce 2048;
    };

  testScript = ''
    import json

    ADMIN = "PANDO_TICKET=$(cat /var/lib/pando/ticket)"

    machine.start()
    machine.wait_for_unit("pando.service")

    with subtest("install the echo plugin"):
        record = json.loads(machine.succeed(f"{ADMIN} pando plugin install ${echoWasm} --manifest ${echoManifest} --json"))
        print(f"installed: {record}")

    with subtest("call it once it runs"):
        out = machine.wait_until_succeeds(f"{ADMIN} pando plugin call echo echo ping", timeout=120)
        assert out == "ping", f"echo answered {out!r}"
        answer = json.loads(machine.succeed(f"{ADMIN} pando plugin call echo tagged '{{\"x\": 1}}' --json"))
        assert answer["output"]["version"] == "1", answer
        assert answer["output"]["input"]["x"] == 1, answer

    with subtest("the node reports it running"):
        info = json.loads(machine.succeed(f"{ADMIN} pando plugin info echo --json"))
        assert all(node["state"] == "running" for node in info["nodes"]), info

    with subtest("the KV store still serves beside the plugin"):
        machine.succeed(f"{ADMIN} pando kv set after-plugin yes")
        assert machine.succeed(f"{ADMIN} pando kv get after-plugin").strip() == "yes"
  '';
}
