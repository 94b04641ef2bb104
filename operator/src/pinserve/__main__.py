from pinserve.cli import main

raise SystemExit(main())
