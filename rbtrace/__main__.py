from rbtrace.cli import main

main()
