# NixOS module: `services.pando`, a Pando node (`pando.service`) and, optionally, the cluster's file system mounted
# through it (`pando-mount.service`). The options are listed in the README's "Nix and NixOS" section (a test checks every one is).
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  cfg = config.services.pando;

  inherit (lib)
    literalExpression
    mkIf
    mkMerge
    mkOption
    optional
    optionals
    types
    ;

  # The node's data directory: systemd creates /var/lib/pando (StateDirectory) owned by the pando user; `%S` is
  # systemd's name for /var/lib in a unit's command line.
  dataDir = "/var/lib/pando";

  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "pando-node.toml" cfg.settings;

  # "0.0.0.0:7000" and "[::]:7000" alike: the port is what follows the last colon (the option's type checks the form).
  port = lib.toInt (lib.last (lib.splitString ":" cfg.bind));

  # A file holding a secret (a join ticket, a ticket with a token) must be named by a string such as
  # "/run/keys/pando-join": a Nix path literal, or a string naming the store, would put the secret into the
  # world-readable Nix store.
  isRuntimePath =
    file: builtins.isString file && lib.hasPrefix "/" file && !(lib.hasPrefix builtins.storeDir file);
  secretFileAssertion = option: file: {
    assertion = file == null || isRuntimePath file;
    message = ''
      ${option} must be an absolute path given as a string outside ${builtins.storeDir} (such as
      "/run/keys/pando-join"), not a Nix path or a store path: it holds a secret, and anything in the Nix store
      is readable by every user of the machine. Got: ${toString file}
    '';
  };

  # The join ticket reaches the node through its environment (PANDO_JOIN), read from the credential systemd hands
  # this service alone (LoadCredential=join:FILE): never on a command line (visible in ps) nor in the store.
  nodeStart = pkgs.writeShellScript "pando-node-start" ''
    if [ -n "''${CREDENTIALS_DIRECTORY:-}" ] && [ -r "$CREDENTIALS_DIRECTORY/join" ]; then
      PANDO_JOIN="$(< "$CREDENTIALS_DIRECTORY/join")"
      export PANDO_JOIN
    fi
    exec ${lib.getExe' cfg.package "pando-node"} "$@"
  '';

  # The unit counts as started once the node serves: it writes DIR/ticket after it has a leader (or after 10 s
  # without one). A restart finds the previous start's ticket at once. Bounded by TimeoutStartSec.
  waitForTicket = pkgs.writeShellScript "pando-wait-for-ticket" ''
    until [ -s "$1/ticket" ]; do
      ${pkgs.coreutils}/bin/sleep 0.2
    done
  '';

  # Everything after --data-dir, escaped for systemd (which would otherwise expand `%` and `$` in it).
  nodeArgs =
    [
      "--bind"
      cfg.bind
    ]
    ++ optionals (cfg.settings != { }) [
      "--config"
      "${configFile}"
    ]
    ++ cfg.extraArgs;

  # The mount's ticket, likewise through a credential and the environment (PANDO_TICKET).
  mountStart = pkgs.writeShellScript "pando-mount-start" ''
    PANDO_TICKET="$(< "$CREDENTIALS_DIRECTORY/ticket")"
    export PANDO_TICKET
    exec ${lib.getExe' cfg.package "pando"} mount "$@"
  '';

  mountTicketFile = if cfg.mount.ticketFile != null then toString cfg.mount.ticketFile else "${dataDir}/ticket";

  mountArgs =
    [ cfg.mount.path ]
    ++ optional cfg.mount.allowOther "--allow-other"
    ++ optional cfg.mount.readOnly "--read-only"
    ++ cfg.mount.extraArgs;
in
{
  options.services.pando = {
    enable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to run a Pando node (`pando.service`, as the `pando` user, data in `/var/lib/pando`). On its first
        start the node founds a new cluster, unless {option}`services.pando.joinTokenFile` names a join ticket;
        the founder writes a ticket carrying an admin token to `/var/lib/pando/ticket` (mode 0600).
      '';
    };

    package = mkOption {
      type = types.package;
      default = pkgs.pando or (pkgs.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.pando (this flake's overlay), else the package built from nix/package.nix";
      description = "The Pando package: `pando-node` runs the node, `pando` the CLI (also put on the system's PATH).";
    };

    bind = mkOption {
      type = types.strMatching ".+:[0-9]+";
      default = "127.0.0.1:7000";
      example = "192.168.1.10:7000";
      description = ''
        Socket address the node listens on (QUIC, so UDP), as `IP:PORT` or `[IPv6]:PORT`; passed as `--bind`.
        The node announces this address to its peers and writes it into its tickets, so in a cluster of several
        machines give an address the other members and clients can reach. The default serves this machine only;
        a wildcard such as `0.0.0.0` would be announced as is, which other machines cannot dial.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open the UDP port of {option}`services.pando.bind` in the firewall (QUIC is UDP).";
    };

    joinTokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/pando-join";
      description = ''
        File holding a join ticket (from `pando cluster join-token create --as voter`): on its first start the node
        joins that ticket's cluster instead of founding one. A secret: give the path as a string outside the Nix
        store (a Nix path would copy the file into the store, and an assertion refuses it). systemd hands the file
        to the node as a credential (`LoadCredential=join:FILE`) and the node reads it from `PANDO_JOIN`; the
        file must exist whenever the service starts (the node ignores it once it belongs to a cluster, so it may
        be set back to `null` after the first start). `null`: found a new cluster.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--blob-replicas"
        "2"
      ];
      description = ''
        Further command-line arguments of `pando-node` (see the README's "Node options"), after `--data-dir`,
        `--bind` and `--config`; a flag here overrides {option}`services.pando.settings`. The node's own
        `--mount` cannot work inside this service's sandbox: use {option}`services.pando.mount.enable`.
      '';
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''
        {
          snapshot-every = 10000;
          job-workers = 4;
        }
      '';
      description = ''
        Node configuration, written to a TOML file passed as `--config FILE`: its keys are the long flag names of
        `pando-node` without the dashes in front (`snapshot-every = 10000`, `job-workers = 4`); flags on the
        command line ({option}`services.pando.extraArgs`, `--bind`, `--data-dir`) win over it. Empty: no
        `--config`. `pando-node --print-config` with the same arguments prints the settings in effect.
      '';
    };

    logFilter = mkOption {
      type = types.str;
      default = "info,openraft=warn";
      example = "debug,openraft=info";
      description = "Log filter of the node, exported as `PANDO_LOG` (a tracing-subscriber `EnvFilter`; logs go to the journal).";
    };

    mount = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether to mount the cluster's file system (FUSE) at {option}`services.pando.mount.path`, through this
          machine's node: `pando-mount.service` runs `pando mount PATH` as root (it needs `/dev/fuse` and to mount)
          and requires `pando.service`.
        '';
      };

      path = mkOption {
        type = types.str;
        default = "/mnt/pando";
        description = "Where the file system is mounted (created when missing; it must be empty).";
      };

      allowOther = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether users other than root may use the mount (`--allow-other`, FUSE's `allow_other`); also sets
          {option}`programs.fuse.userAllowOther`.
        '';
      };

      readOnly = mkOption {
        type = types.bool;
        default = false;
        description = "Whether to mount read-only (`--read-only`).";
      };

      ticketFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/keys/pando-fs-ticket";
        description = ''
          File holding the ticket the mount uses, whose token needs the file system capability (from
          `pando token create --fs write`, or an admin token). A secret, given like
          {option}`services.pando.joinTokenFile` (a string outside the Nix store); handed over as a credential
          (`LoadCredential=ticket:FILE`) and read into `PANDO_TICKET`. `null`: the node's own
          `/var/lib/pando/ticket`, which carries the admin token on the node that founded the cluster only; on
          every other node set this option.
        '';
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "--cache-ms"
          "200"
          "--write-through"
        ];
        description = "Further arguments of `pando mount` (`--cache-ms MS`, `--write-through`, `--uid-map L:S`, `--gid-map L:S`).";
      };
    };
  };

  config = mkMerge [
    {
      assertions = [
        {
          assertion = cfg.mount.enable -> cfg.enable;
          message = "services.pando.mount.enable mounts through this machine's node: it needs services.pando.enable.";
        }
      ];
    }

    (mkIf cfg.enable {
      assertions = [
        (secretFileAssertion "services.pando.joinTokenFile" cfg.joinTokenFile)
        (secretFileAssertion "services.pando.mount.ticketFile" cfg.mount.ticketFile)
        {
          assertion = cfg.openFirewall -> port != 0;
          message = "services.pando.openFirewall needs a fixed port in services.pando.bind, not port 0.";
        }
        {
          assertion = lib.hasPrefix "/" cfg.mount.path;
          message = "services.pando.mount.path must be an absolute path.";
        }
      ];

      # The CLI (and its shell completions) for the administrator.
      environment.systemPackages = [ cfg.package ];

      users.users.pando = {
        isSystemUser = true;
        group = "pando";
        home = dataDir;
        description = "Pando node";
      };
      users.groups.pando = { };

      networking.firewall.allowedUDPPorts = optional cfg.openFirewall port;

      systemd.services.pando = {
        description = "Pando node";
        wantedBy = [ "multi-user.target" ];
        # The node binds a fixed address and reaches its peers at start.
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        environment.PANDO_LOG = cfg.logFilter;

        serviceConfig = {
          Type = "simple";
          ExecStart = "${nodeStart} --data-dir %S/pando ${utils.escapeSystemdExecArgs nodeArgs}";
          ExecStartPost = "${waitForTicket} %S/pando";
          # toString: a path never reaches the store here (the assertion above refuses one anyway).
          LoadCredential = optional (cfg.joinTokenFile != null) "join:${toString cfg.joinTokenFile}";

          DynamicUser = false;
          User = "pando";
          Group = "pando";
          StateDirectory = "pando";
          StateDirectoryMode = "0700";
          UMask = "0077";

          Restart = "on-failure";
          RestartSec = "2s";
          # A join (or a first start waiting for a leader) may take a while; then the unit fails and restarts.
          TimeoutStartSec = "120s";
          # SIGTERM stops the supervision tree in reverse start order and closes the endpoint; the node exits within
          # 20 s whatever happens, so 30 s leaves a margin before SIGKILL.
          KillSignal = "SIGTERM";
          TimeoutStopSec = "30s";
          # Client connections (up to 1,024), the database, blob files.
          LimitNOFILE = 65536;

          # Hardening.
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RemoveIPC = true;
          LockPersonality = true;
          # wasmtime compiles plugins to machine code at run time (a JIT): it needs writable, then executable memory.
          MemoryDenyWriteExecute = false;
          # AF_NETLINK: iroh watches the network interfaces.
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
            "AF_NETLINK"
          ];
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
            "~@resources"
          ];
          # A refused call fails with EPERM (a shell hook's `nice`, say) rather than killing the node.
          SystemCallErrorNumber = "EPERM";
          SystemCallArchitectures = "native";
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
        };
      };
    })

    (mkIf (cfg.enable && cfg.mount.enable) {
      boot.kernelModules = [ "fuse" ];
      programs.fuse.userAllowOther = mkIf cfg.mount.allowOther true;

      systemd.services.pando-mount = {
        description = "Pando file system at ${cfg.mount.path}";
        wantedBy = [ "multi-user.target" ];
        requires = [ "pando.service" ];
        after = [ "pando.service" ];
        # Retry while the node comes up (its ticket may not exist yet) rather than give up after five starts.
        unitConfig.StartLimitIntervalSec = 0;
        environment.PANDO_LOG = "warn";

        # Runs as root, without the node's sandbox: the mount is made in this unit's mount namespace, so anything
        # that gives the unit a namespace of its own (ProtectSystem, ProtectHome, PrivateTmp, PrivateDevices,
        # ProtectKernelModules, ReadWritePaths, ...) would hide the mount from the rest of the machine. mount(2),
        # and the clean-up of a mount a crash left behind, need CAP_SYS_ADMIN.
        serviceConfig = {
          Type = "simple";
          # `-`: a mount a crashed run left behind makes mkdir fail; `pando mount` clears it itself.
          ExecStartPre = "-${pkgs.coreutils}/bin/mkdir -p ${utils.escapeSystemdExecArgs [ cfg.mount.path ]}";
          ExecStart = "${mountStart} ${utils.escapeSystemdExecArgs mountArgs}";
          LoadCredential = [ "ticket:${mountTicketFile}" ];
          Restart = "on-failure";
          RestartSec = "5s";
          # SIGTERM: the mount writes back what it buffered, releases its locks and unmounts.
          KillSignal = "SIGTERM";
          TimeoutStopSec = "30s";

          DevicePolicy = "closed";
          DeviceAllow = [ "/dev/fuse rw" ];
          NoNewPrivileges = true;
          LockPersonality = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
            "AF_NETLINK"
          ];
          SystemCallArchitectures = "native";
        };
      };
    })
  ];
}
