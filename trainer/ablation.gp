# ablation.gp: gnuplot -e "dir='out/ablation'" trainer/ablation.gp
# nDCG@10 and top-10 overlap against FLOPs (fraction of the full model), cranfield grid,
# three systems, BM25 and random order as reference lines. Data: trainer/ablation_table.py.
if (!exists("dir")) dir = 'out/ablation'
if (!exists("coll")) coll = 'cranfield'
if (!exists("tag")) tag = ''
set terminal pngcairo size 900,560 font ",11" noenhanced
set key below maxrows 2
set grid
set xlabel "linear FLOPs per pair / full model"
set xrange [0:1.05]
f(s) = sprintf("%s/plot-%s-%s.dat", dir, s, coll)
set output sprintf("docs/ablation-ndcg-%s%s.png", coll, tag)
set title sprintf("%s%s: nDCG@10 of every (exit, ratio) sub-model", coll, tag)
set ylabel "nDCG@10"
plot f("full") u 3:4 w p pt 7 ps 1.3 t "naive truncation", \
     f("cascade") u 3:4 w p pt 5 ps 1.1 t "self-distillation", \
     f("comp") u 3:4 w p pt 9 ps 1.3 t "self-distill. + compensation", \
     f("bm25") u 1:2 w l lw 2 dt 2 t "BM25", \
     f("random") u 1:2 w l lw 2 dt 3 t "random order"
set output sprintf("docs/ablation-overlap-%s%s.png", coll, tag)
set title sprintf("%s%s: top-10 overlap with the system's own full model", coll, tag)
set ylabel "top-10 overlap"
set yrange [0:1.05]
plot f("full") u 3:6 w p pt 7 ps 1.3 t "naive truncation", \
     f("cascade") u 3:6 w p pt 5 ps 1.1 t "self-distillation", \
     f("comp") u 3:6 w p pt 9 ps 1.3 t "self-distill. + compensation", \
     0.1 w l lw 2 dt 3 t "random order (0.1)", 0.8 w l lw 1 dt 4 t "target 0.8"
