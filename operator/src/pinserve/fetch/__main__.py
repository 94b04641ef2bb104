from pinserve.fetch import main

raise SystemExit(main())
