from interference.cli import main

raise SystemExit(main())
