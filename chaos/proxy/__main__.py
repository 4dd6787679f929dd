from chaos.proxy.cli import main

raise SystemExit(main())
