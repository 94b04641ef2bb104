from pinserve.agent.cli import main

raise SystemExit(main())
