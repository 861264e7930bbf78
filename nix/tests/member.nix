# A test machine that runs a Pando node from the module, listening on its own address on the test network (the node
# writes that address into its tickets and announces it to its peers). Each test adds what it needs on top.
{ module, package }:

{ config, ... }:
{
  imports = [ module ];
  virtualisation.memorySize = 1536;
  services.pando = {
    enable = true;
    inherit package;
    bind = "${config.networking.primaryIPAddress}:7000";
    openFirewall = true;
  };
}
